"""Run by tests/test_ros2.py with a Python that has rclpy: starts offseg-ros2 on loopback, publishes frames saved
by the test (frames.npz) with numbered headers, and saves what comes back on segmentation and overlay."""
import array
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

folder, model = Path(sys.argv[1]), sys.argv[2]
images = list(np.load(folder / "frames.npz").values())
node_process = subprocess.Popen([sys.executable, "-c", "import sys; from runtime.ros2_node import main; "
                                 "sys.exit(main())", "--ros-args", "-p", f"model_file_path:={model}",
                                 "-r", "__ns:=/loop"])
rclpy.init()
node = rclpy.create_node("loopback_test")
received = {"segmentation": {}, "overlay": {}}
for topic in received:
    node.create_subscription(Image, f"/loop/{topic}",
                             lambda msg, topic=topic: received[topic].setdefault(msg.header.frame_id, msg), 10)
publisher = node.create_publisher(Image, "/loop/image", qos_profile_sensor_data)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and any(len(r) < len(images) for r in received.values()):
    for index, image in enumerate(images):
        if f"camera_{index}" not in received["segmentation"]:
            header = Header(frame_id=f"camera_{index}")
            header.stamp.sec = 100 + index
            publisher.publish(Image(header=header, height=image.shape[0], width=image.shape[1], encoding="bgr8",
                                    step=3 * image.shape[1], data=array.array("B", image.tobytes())))
    rclpy.spin_once(node, timeout_sec=0.5)
node_process.terminate()  # SIGTERM: the node must end cleanly, exit 143
results = {}
for topic, messages in received.items():
    for frame_id, msg in messages.items():
        results[f"{topic}/{frame_id}"] = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
        results[f"{topic}/{frame_id}/meta"] = np.array([msg.header.stamp.sec, msg.width, msg.step])
        results[f"{topic}/{frame_id}/encoding"] = np.array(msg.encoding)
np.savez(folder / "received.npz", returncode=node_process.wait(timeout=60), **results)
rclpy.shutdown()
