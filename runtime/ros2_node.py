"""``offseg-ros2``: a ROS 2 node (rclpy) that segments the images of a topic with any model the runtime opens.

Subscribes to ``image`` (sensor_msgs/Image) or ``image/compressed`` (``image_transport:=compressed``) and
publishes ``segmentation`` (class ids, mono8 / mono16, the input's header), ``overlay`` and ``label_info``
(vision_msgs/LabelInfo, transient local). The frames run through the runtime's pipeline and the message
conversions of ``ros_images``, the ones ``offseg-run --rosbag`` uses.
"""
from __future__ import annotations

import argparse
import array
import logging
import queue
import threading
from collections.abc import Iterator

from .console import add_common_options, run
from .errors import OffsegError
from .sources import Frame, Source

log = logging.getLogger(__name__)

PARAMETERS = {  # name: (default, meaning); named as Isaac ROS's TensorRT node and segmentation decoder name them
    "engine_file_path": ("", "TensorRT engine (.plan); used when set"),
    "model_file_path": ("", "ONNX model (.onnx), or a .pth checkpoint, when no engine is given"),
    "color_segmentation_mask_encoding": ("rgb8", "encoding of the overlay: rgb8 or bgr8"),
    "color_palette": ([0], "one 0xRRGGBB colour per class ([0]: the model's palette)"),
    "alpha": (0.5, "overlay opacity; 1.0 publishes the colour mask alone"),
    "image_transport": ("raw", "raw (image) or compressed (image/compressed)"),
    "input_qos": ("SENSOR_DATA", "subscription QoS: SENSOR_DATA (best effort) or DEFAULT (reliable)"),
    "batch_size": (1, "frames per inference"),
    "resize": ("letterbox", "fitting frames to a fixed-size model: letterbox or stretch"),
    "allow_engine_host_code": (False, "run a version-compatible engine's embedded lean TensorRT runtime (code from "
                               "the .plan file, run in this process): only for engines you built or trust"),
}


class PushedFrames(Source):
    """Frames pushed by subscription callbacks; ``push`` waits while the bounded queue is full, so a slow model
    leaves the middleware to drop frames by the subscription's history depth."""

    description = "ROS 2 image topic"

    def __init__(self, size: int = 2):
        super().__init__()
        self.queue: queue.Queue = queue.Queue(size)
        self.stopped = threading.Event()
        self.index = 0

    def push(self, image, header) -> None:
        while not self.stopped.is_set():
            try:
                self.queue.put(Frame(self.index, image, f"{self.index:06d}", header), timeout=0.1)
                self.index += 1
                return
            except queue.Full:
                continue

    def frames(self) -> Iterator[Frame]:
        while not self.stopped.is_set():
            try:
                yield self.queue.get(timeout=0.1)
            except queue.Empty:
                continue

    def stop(self) -> None:
        self.stopped.set()


def _rclpy():
    try:
        import rclpy
        import rclpy.exceptions
        import rclpy.executors
        import rclpy.qos
        import rclpy.signals
        from sensor_msgs.msg import CompressedImage, Image
    except ImportError:
        raise OffsegError("offseg-ros2 needs ROS 2's rclpy and sensor_msgs: source your ROS 2 setup.bash "
                          "first") from None
    return rclpy, Image, CompressedImage


def _kit(Image):
    from .ros_images import MessageKit
    try:
        from vision_msgs.msg import LabelInfo, VisionClass
    except ImportError:
        log.warning("vision_msgs is not installed (apt install ros-$ROS_DISTRO-vision-msgs): no label_info topic")
        LabelInfo = VisionClass = None
    return MessageKit(Image, LabelInfo, VisionClass, lambda pixels: array.array("B", pixels.tobytes()))


QOS_NAMES = ("SENSOR_DATA", "DEFAULT")
TRANSPORTS = ("raw", "compressed")
KINDS = {bool: "true or false", int: "an integer", float: "a decimal number (1.0, not 1)", str: "a string",
         list: "a list of integers"}  # what a ROS 2 parameter of the default's type takes


def _parameters(node, exceptions) -> dict:
    """The declared parameters' values; a value of another type than the default's is one sentence, not rclpy's
    exception (ROS 2 parameters are typed: ``-p alpha:=1`` is an integer and refused for a double)."""
    values = {}
    for name, (default, _) in PARAMETERS.items():
        try:
            values[name] = node.declare_parameter(name, default).value
        except exceptions.ParameterException:
            raise OffsegError(f"parameter {name} takes {KINDS[type(default)]}, e.g. -p {name}:={_example(default)}"
                              ) from None
    return values


def _example(default) -> str:
    if isinstance(default, bool):
        return "true"
    if isinstance(default, list):
        return "[0xFF0000,0x00FF00]"
    return str(default) or "PATH"


def check_parameters(params: dict) -> str:
    """The model path, or OffsegError naming the first parameter that cannot work, before the model loads."""
    from .limits import check_at_least
    from .preprocess import RESIZE_POLICIES
    from .ros_images import COLOUR_ENCODINGS

    model = params["engine_file_path"] or params["model_file_path"]
    if not model:
        raise OffsegError("give a model: -p engine_file_path:=MODEL.plan or -p model_file_path:=MODEL.onnx")
    for name, allowed in (("image_transport", TRANSPORTS), ("input_qos", QOS_NAMES),
                          ("color_segmentation_mask_encoding", COLOUR_ENCODINGS), ("resize", RESIZE_POLICIES)):
        if params[name] not in allowed:
            raise OffsegError(f"parameter {name} must be {' or '.join(allowed)}, got {params[name]!r}")
    if not 0 <= params["alpha"] <= 1:
        raise OffsegError(f"parameter alpha (the overlay opacity) must be between 0 and 1, got {params['alpha']:g}")
    check_at_least(("parameter batch_size", params["batch_size"], 1))
    if not params["color_palette"]:  # rclpy gives None for an empty list
        raise OffsegError("parameter color_palette takes one 0xRRGGBB colour per class, or [0] for the model's "
                          "palette")
    return model


def _run(args: argparse.Namespace, ros_args: list[str]) -> int:
    from pathlib import Path

    from .backends import open_backend
    from .pipeline import Pipeline
    from .ros_images import SegmentationMessages, palette_from_hex, to_bgr

    rclpy, Image, CompressedImage = _rclpy()
    rclpy.init(args=["offseg-ros2", *ros_args], signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node("offseg_segmentation")
    executor = rclpy.executors.SingleThreadedExecutor()
    spinner = threading.Thread(target=executor.spin, name="rclpy", daemon=True)
    try:
        params = _parameters(node, rclpy.exceptions)
        model = check_parameters(params)
        backend = open_backend(Path(model), allow_engine_host_code=params["allow_engine_host_code"] is True)
        info = backend.info
        palette = None if list(params["color_palette"]) == [0] else palette_from_hex(params["color_palette"],
                                                                                      info.num_classes)
        kit = _kit(Image)
        messages = SegmentationMessages(kit, info, params["alpha"], params["color_segmentation_mask_encoding"],
                                        palette)
        qos = rclpy.qos
        input_qos = {"SENSOR_DATA": qos.qos_profile_sensor_data, "DEFAULT": 10}[params["input_qos"]]
        labels_pub = node.create_publisher(Image, "segmentation", 10)
        overlay_pub = node.create_publisher(Image, "overlay", 10)
        if kit.label_info is not None:
            latched = qos.QoSProfile(depth=1, durability=qos.DurabilityPolicy.TRANSIENT_LOCAL)
            header = type(Image().header)(stamp=node.get_clock().now().to_msg())
            node.create_publisher(kit.label_info, "label_info", latched).publish(messages.label_info(header))
        source = PushedFrames()

        def received(msg) -> None:
            try:
                source.push(to_bgr(msg), msg.header)
            except OffsegError as error:
                node.get_logger().warning(f"dropping a frame: {error}")

        compressed = params["image_transport"] == "compressed"
        node.create_subscription(CompressedImage if compressed else Image,
                                 "image/compressed" if compressed else "image", received, input_qos)

        def publish(result) -> bool:
            header = result.frame.origin
            labels_pub.publish(messages.labels(result.labels, header))
            overlay_pub.publish(messages.overlay(result.frame.image, result.labels, header))
            return True

        executor.add_node(node)
        spinner.start()
        log.info("%s (%d classes) on %s: segmenting %s", info.name, info.num_classes, backend.description,
                 node.resolve_topic_name("image/compressed" if compressed else "image"))
        try:
            Pipeline(backend, params["batch_size"], params["resize"]).run(source, publish)
        finally:
            backend.close()
    finally:
        executor.shutdown()
        if spinner.is_alive():
            spinner.join(timeout=10)  # no callback may run while the node is destroyed
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys
    argv = sys.argv[1:] if argv is None else argv
    ours, ros_args = (argv[:argv.index("--ros-args")], argv[argv.index("--ros-args"):]) if "--ros-args" in argv \
        else (argv, [])
    parser = argparse.ArgumentParser(
        prog="offseg-ros2", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="ROS 2 segmentation node: image -> segmentation (class ids), overlay, label_info.",
        epilog="ROS parameters (--ros-args -p NAME:=VALUE):\n" + "\n".join(
            f"  {name} ({default!r}): {meaning}" for name, (default, meaning) in PARAMETERS.items()))
    parser.add_argument("--ros-args", nargs=argparse.REMAINDER, help="ROS 2 arguments, to the end of the line: "
                        "-p NAME:=VALUE (parameters below), -r FROM:=TO (remappings, __ns:=/NAMESPACE)")
    add_common_options(parser)
    return run(lambda args: _run(args, ros_args), parser, ours)
