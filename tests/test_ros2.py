"""The rosbag2 twin of offseg-ros2: a bag of camera frames in, a bag of label images, overlays and LabelInfo out,
with the input's headers and the labels ``offseg-run --images`` gives on the same frames."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("onnx")
from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402
from tiny_onnx import write_tiny_onnx  # noqa: E402

from offseg.data.synthetic import render_video  # noqa: E402
from runtime import rosbag_io  # noqa: E402
from runtime.cli import main as run_main  # noqa: E402

HEIGHT, WIDTH = 48, 64


def _model(path: Path, num_classes: int) -> Path:
    """A tiny ONNX whose labels follow the colours (a seeded random Conv), so equal labels mean something."""
    return write_tiny_onnx(path, weight=np.random.default_rng(num_classes).normal(size=(num_classes, 3, 4, 4)))


def _raw_image(types, header, image: np.ndarray, encoding: str, padding: int = 0):
    pixels = {"bgr8": image, "rgb8": image[:, :, ::-1], "mono8": cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)}[encoding]
    rows = pixels.reshape(HEIGHT, -1)
    rows = np.concatenate([rows, np.zeros((HEIGHT, padding), np.uint8)], axis=1)  # step beyond the pixels
    return types["sensor_msgs/msg/Image"](header=header, height=HEIGHT, width=WIDTH, encoding=encoding,
                                          is_bigendian=0, step=rows.shape[1], data=rows.reshape(-1).copy())


def _write_bag(path: Path, storage: StoragePlugin, compressed: bool = False, encodings=("bgr8", "rgb8", "mono8"),
               frames: int = 4):
    """A camera bag: frames of render_video on /camera/image; returns the BGR images the runtime should see."""
    store = rosbag_io.typestore()
    types = store.types
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    seen = []
    with Writer(path, version=9, storage_plugin=storage) as writer:
        connection = writer.add_connection("/camera/image", msgtype, typestore=store)
        for index, (image, _) in enumerate(render_video(3, frames, HEIGHT, WIDTH)):
            stamp = types["builtin_interfaces/msg/Time"](sec=100 + index, nanosec=5 * index)
            header = types["std_msgs/msg/Header"](stamp=stamp, frame_id=f"camera_{index}")
            if compressed:
                data = np.frombuffer(cv2.imencode(".png", image)[1].tobytes(), np.uint8).copy()
                msg = types[msgtype](header=header, format="png", data=data)
                seen.append(image)
            else:
                encoding = encodings[index % len(encodings)]
                msg = _raw_image(types, header, image, encoding, padding=8 * (index % 2))
                seen.append(cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
                            if encoding == "mono8" else image)
            writer.write(connection, 1_000_000_000 * (index + 1), store.serialize_cdr(msg, msgtype))
    return seen


def _reference_labels(tmp_path: Path, model: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """What ``offseg-run --images`` says on the same frames (label PNGs)."""
    folder, masks = tmp_path / "frames", tmp_path / "masks"
    folder.mkdir()
    for index, image in enumerate(images):
        cv2.imwrite(str(folder / f"{index:06d}.png"), image)
    assert run_main(["--engine", str(model), "--images", str(folder), "--save-masks", str(masks),
                     "--no-progress"]) == 0
    return [cv2.imread(str(masks / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED) for index in range(len(images))]


def _read_bag(path: Path) -> dict[str, list]:
    store = rosbag_io.typestore()
    with Reader(path) as reader:
        out: dict[str, list] = {c.topic: [] for c in reader.connections}
        for connection, timestamp, raw in reader.messages():
            out[connection.topic].append((timestamp, store.deserialize_cdr(raw, connection.msgtype)))
    return out


def _labels_of(msg) -> np.ndarray:
    dtype = np.uint8 if msg.encoding == "mono8" else np.dtype("<u2")
    return np.frombuffer(msg.data.tobytes(), dtype).reshape(msg.height, msg.width)


@pytest.mark.parametrize("storage,compressed", [(StoragePlugin.SQLITE3, False), (StoragePlugin.MCAP, False),
                                                (StoragePlugin.SQLITE3, True)])
def test_rosbag_twin_keeps_headers_and_matches_offseg_run(tmp_path, storage, compressed):
    model = _model(tmp_path / "m.onnx", 7)
    images = _write_bag(tmp_path / "in", storage, compressed)
    out = tmp_path / "out"
    assert run_main(["--engine", str(model), "--rosbag", str(tmp_path / "in"), "--rosbag-out", str(out),
                     "--no-progress"]) == 0
    expected = _reference_labels(tmp_path, model, images)
    assert len({int(v) for e in expected for v in np.unique(e)}) > 1, "the model must give more than one class"
    assert list(out.glob("*.mcap" if storage == StoragePlugin.MCAP else "*.db3"))  # the input's storage
    topics = _read_bag(out)
    assert set(topics) == {"/offseg/segmentation", "/offseg/overlay", "/offseg/label_info"}
    (_, info), = topics["/offseg/label_info"]
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(i, f"class {i}") for i in range(7)]
    assert len(topics["/offseg/segmentation"]) == len(topics["/offseg/overlay"]) == len(images)
    for index, ((time, labels), (overlay_time, overlay)) in enumerate(zip(topics["/offseg/segmentation"],
                                                                           topics["/offseg/overlay"])):
        assert time == overlay_time == 1_000_000_000 * (index + 1)  # the input's bag time
        for msg in (labels, overlay):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (100 + index, 5 * index)
            assert msg.header.frame_id == f"camera_{index}"
            assert (msg.height, msg.width, msg.is_bigendian) == (HEIGHT, WIDTH, 0)
        assert (labels.encoding, labels.step) == ("mono8", WIDTH)
        assert (overlay.encoding, overlay.step, len(overlay.data)) == ("rgb8", 3 * WIDTH, 3 * WIDTH * HEIGHT)
        np.testing.assert_array_equal(_labels_of(labels), expected[index])


def test_more_than_255_classes_give_mono16(tmp_path):
    model = _model(tmp_path / "m.onnx", 300)
    images = _write_bag(tmp_path / "in", StoragePlugin.SQLITE3, encodings=("bgr8",), frames=2)
    assert run_main(["--engine", str(model), "--rosbag", str(tmp_path / "in"), "--rosbag-out",
                     str(tmp_path / "out"), "--ros-namespace", "/seg", "--no-progress"]) == 0
    expected = _reference_labels(tmp_path, model, images)
    assert max(int(e.max()) for e in expected) > 255
    for index, (_, msg) in enumerate(_read_bag(tmp_path / "out")["/seg/segmentation"]):
        assert (msg.encoding, msg.step) == ("mono16", 2 * WIDTH)
        np.testing.assert_array_equal(_labels_of(msg), expected[index])


def test_an_interrupted_run_leaves_a_finalized_bag_of_the_frames_done(tmp_path, monkeypatch):
    model = _model(tmp_path / "m.onnx", 7)
    _write_bag(tmp_path / "in", StoragePlugin.SQLITE3, frames=6)
    write = rosbag_io.RosbagSink.write

    def interrupted_after_two(sink, result):
        if sink.frames == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        write(sink, result)
    monkeypatch.setattr(rosbag_io.RosbagSink, "write", interrupted_after_two)
    out = tmp_path / "out"
    assert run_main(["--engine", str(model), "--rosbag", str(tmp_path / "in"), "--rosbag-out", str(out),
                     "--no-progress"]) == 130
    assert len(_read_bag(out)["/offseg/segmentation"]) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary bag left


def _mosaic(image: np.ndarray, pattern: str) -> np.ndarray:
    """The Bayer mosaic a sensor with ``pattern`` (its top-left 2x2, e.g. "rggb") records of a BGR image."""
    mosaic = np.zeros(image.shape[:2], np.uint8)
    for index, colour in enumerate(pattern):
        row, column = divmod(index, 2)
        mosaic[row::2, column::2] = image[row::2, column::2, "bgr".index(colour)]
    return mosaic


@pytest.mark.parametrize("encoding", ["bgra8", "rgba8", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
                                      "yuv422", "yuv422_yuy2"])
def test_camera_encodings_give_the_picture_the_camera_saw(encoding):
    """ZED (bgra8), machine-vision drivers (Bayer) and usb_cam (packed YUV 4:2:2): each decodes to the BGR picture
    (exactly, or up to demosaicing and chroma subsampling); a swapped Bayer pattern or byte order would not."""
    from types import SimpleNamespace

    from runtime.ros_images import raw_to_bgr
    image = next(iter(render_video(4, 1, HEIGHT, WIDTH)))[0]
    pixels = {"bgra8": lambda: cv2.cvtColor(image, cv2.COLOR_BGR2BGRA),
              "rgba8": lambda: cv2.cvtColor(image, cv2.COLOR_BGR2RGBA),
              "yuv422": lambda: cv2.cvtColor(image, cv2.COLOR_BGR2YUV_UYVY),
              "yuv422_yuy2": lambda: cv2.cvtColor(image, cv2.COLOR_BGR2YUV_YUY2)}.get(
        encoding, lambda: _mosaic(image, encoding[6:10]))()
    rows = np.concatenate([pixels.reshape(HEIGHT, -1), np.zeros((HEIGHT, 6), np.uint8)], axis=1)  # padded rows
    msg = SimpleNamespace(encoding=encoding, height=HEIGHT, width=WIDTH, step=rows.shape[1], data=rows.tobytes())
    decoded = raw_to_bgr(msg)
    error = np.abs(decoded.astype(int) - image).mean()
    # measured: 4.1 (Bayer), 2.5 (YUV); the wrong Bayer pattern 26-41, the other YUV order 84, rgba as bgra 26
    assert decoded.shape == image.shape and (error == 0 if encoding.endswith("a8") else error < 8), error


@pytest.mark.parametrize("case,message", [
    ("encoding", "/camera/image message 0: image encoding 'mono16' is not supported; publish one of bgr8, rgb8"),
    ("topic", "topic /camera/info in"),
    ("exists", "exists; a bag is never overwritten"),
    ("bad ns", "--ros-namespace 'bad ns' is not a ROS 2 name"),
    ("1robot", "--ros-namespace '1robot' is not a ROS 2 name"),
])
def test_bag_mistakes_are_one_sentence(tmp_path, capsys, case, message):
    model = _model(tmp_path / "m.onnx", 7)
    store = rosbag_io.typestore()
    types = store.types
    with Writer(tmp_path / "in", version=9) as writer:
        image = writer.add_connection("/camera/image", "sensor_msgs/msg/Image", typestore=store)
        info = writer.add_connection("/camera/info", "std_msgs/msg/String", typestore=store)
        header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=0),
                                              frame_id="camera")
        msg = types["sensor_msgs/msg/Image"](header=header, height=2, width=2, encoding="mono16",
                                             is_bigendian=0, step=4, data=np.zeros(8, np.uint8))
        writer.write(image, 1, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
        writer.write(info, 1, store.serialize_cdr(types["std_msgs/msg/String"](data="x"), "std_msgs/msg/String"))
    out = tmp_path / "out"
    if case == "exists":
        out.mkdir()
    extra = ["--image-topic", "/camera/info"] if case == "topic" else []
    extra += ["--ros-namespace", case] if case in ("bad ns", "1robot") else []
    assert run_main(["--engine", str(model), "--rosbag", str(tmp_path / "in"), "--rosbag-out", str(out),
                     "--no-progress", *extra]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error and "Traceback" not in error


def test_a_corrupt_message_is_skipped_and_named_in_the_summary(tmp_path):
    model = _model(tmp_path / "m.onnx", 7)
    store = rosbag_io.typestore()
    types = store.types
    with Writer(tmp_path / "in", version=9) as writer:
        connection = writer.add_connection("/camera/image", "sensor_msgs/msg/Image", typestore=store)
        for index in range(3):
            header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=index, nanosec=0),
                                                  frame_id="camera")
            msg = _raw_image(types, header, np.full((HEIGHT, WIDTH, 3), 40 * index, np.uint8), "bgr8")
            raw = store.serialize_cdr(msg, "sensor_msgs/msg/Image")
            writer.write(connection, index + 1, raw[:7] if index == 1 else raw)  # message 1 cut short
    assert run_main(["--engine", str(model), "--rosbag", str(tmp_path / "in"), "--rosbag-out", str(tmp_path / "out"),
                     "--summary", str(tmp_path / "s.json"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"] == 2 and summary["skipped"] == 1
    (skip,) = summary["skipped_frames"]
    assert skip["frame"] == "000001" and skip["reason"].startswith("not a valid sensor_msgs/msg/Image (")
    assert len(_read_bag(tmp_path / "out")["/offseg/segmentation"]) == 2


def test_an_mcap_bag_without_its_footer_says_how_to_recover_it(tmp_path, capsys):
    """What a recording stopped abruptly leaves (here a cut-short copy): the MCAP file ends without its footer."""
    model = _model(tmp_path / "m.onnx", 7)
    _write_bag(tmp_path / "in", StoragePlugin.MCAP, frames=3)
    (mcap,) = (tmp_path / "in").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    assert run_main(["--engine", str(model), "--rosbag", str(tmp_path / "in"), "--rosbag-out", str(tmp_path / "out"),
                     "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {tmp_path / 'in'} is not a rosbag2 the rosbags library can read (") and \
        error.endswith(f"; {mcap.name} ends without the MCAP footer, as a recording stopped abruptly or a cut-short "
                       "copy leaves it: `mcap recover` (the MCAP command-line tool) writes a readable copy of what "
                       "it holds")
    assert not (tmp_path / "out").exists()


def test_a_namespace_without_an_output_bag_is_refused(tmp_path, capsys):
    from runtime.cli import ROS_NAME
    assert all(ROS_NAME.fullmatch(n) for n in ("", "/", "/offseg", "robot_1/seg", "/a/b_2"))
    assert run_main(["--engine", str(tmp_path / "m.onnx"), "--video", "v.mp4", "--ros-namespace", "/x"]) == 2
    assert "--ros-namespace names the topics of a --rosbag-out bag" in capsys.readouterr().err


ROS2_PYTHON = "OFFSEG_ROS2_PYTHON"  # a Python whose environment has rclpy and sensor_msgs (a ROS 2 install)
ROS2_WHEELS = ("ros-rclpy==9.1.2", "ros-rmw-fastrtps-cpp==9.3.3", "ros-sensor-msgs==5.5.1", "ros-std-msgs==5.5.1")


@pytest.fixture(scope="module")
def ros2_python(tmp_path_factory) -> str:
    """``$OFFSEG_ROS2_PYTHON``, or a venv of its own with PyPI's ROS 2 wheels (they re-exec Python with their
    library path and expect a venv layout, so they cannot be installed with ``pip --target``); skips without PyPI."""
    if os.environ.get(ROS2_PYTHON):
        return os.environ[ROS2_PYTHON]
    env = tmp_path_factory.mktemp("ros2") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    pip = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "-q", "install", *ROS2_WHEELS],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode:
        pytest.skip(f"the ROS 2 wheels ({', '.join(ROS2_WHEELS)}) did not install: {pip.stderr.strip()[-300:]}")
    return str(env / "bin" / "python")


@pytest.mark.slow
def test_live_node_on_loopback_publishes_the_labels_of_offseg_run(tmp_path, ros2_python):
    model = _model(tmp_path / "m.onnx", 7)
    images = [image for image, _ in render_video(3, 3, HEIGHT, WIDTH)]
    np.savez(tmp_path / "frames.npz", *images)
    paths = [str(Path(__file__).parents[1]), *sys.path]  # ours first, then this environment's packages
    subprocess.run([ros2_python, str(Path(__file__).with_name("ros2_loopback.py")), str(tmp_path), str(model)],
                   check=True, timeout=180, env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    received = np.load(tmp_path / "received.npz")
    assert int(received["returncode"]) == 143  # SIGTERM ends the node through the runtime's clean-up
    expected = _reference_labels(tmp_path, model, images)
    for index, labels in enumerate(expected):
        assert str(received[f"segmentation/camera_{index}/encoding"]) == "mono8"
        assert str(received[f"overlay/camera_{index}/encoding"]) == "rgb8"
        assert list(received[f"segmentation/camera_{index}/meta"]) == [100 + index, WIDTH, WIDTH]
        assert list(received[f"overlay/camera_{index}/meta"]) == [100 + index, WIDTH, 3 * WIDTH]
        np.testing.assert_array_equal(received[f"segmentation/camera_{index}"], labels)


def test_node_without_rclpy_says_what_to_install(capsys):
    if importlib.util.find_spec("rclpy") is not None:
        pytest.skip("rclpy is installed here")
    from runtime.ros2_node import main as node_main
    assert node_main(["--ros-args", "-p", "model_file_path:=m.onnx"]) == 2
    assert capsys.readouterr().err.strip() == ("error: offseg-ros2 needs ROS 2's rclpy and sensor_msgs: source your "
                                               "ROS 2 setup.bash first")


@pytest.mark.parametrize("change, message", [
    ({"model_file_path": ""}, "give a model: -p engine_file_path:=MODEL.plan or -p model_file_path:=MODEL.onnx"),
    ({"image_transport": "theora"}, "parameter image_transport must be raw or compressed, got 'theora'"),
    ({"input_qos": "BEST_EFFORT"}, "parameter input_qos must be SENSOR_DATA or DEFAULT, got 'BEST_EFFORT'"),
    ({"color_segmentation_mask_encoding": "rgba8"}, "color_segmentation_mask_encoding must be rgb8 or bgr8"),
    ({"resize": "crop"}, "parameter resize must be letterbox or stretch, got 'crop'"),
    ({"alpha": 1.5}, "parameter alpha (the overlay opacity) must be between 0 and 1, got 1.5"),
    ({"batch_size": 0}, "parameter batch_size must be at least 1, got 0"),
    ({"color_palette": None}, "parameter color_palette takes one 0xRRGGBB colour per class, or [0]"),
])
def test_node_parameters_are_checked_before_the_model_loads(change, message):
    from runtime.errors import OffsegError
    from runtime.ros2_node import PARAMETERS, check_parameters
    params = {name: default for name, (default, _) in PARAMETERS.items()} | {"model_file_path": "m.onnx"}
    assert check_parameters(params) == "m.onnx"
    with pytest.raises(OffsegError) as error:
        check_parameters(params | change)
    assert message in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("parameter, message", [
    ("alpha:=1", "parameter alpha takes a decimal number (1.0, not 1), e.g. -p alpha:=0.5"),
    ("batch_size:=2.0", "parameter batch_size takes an integer, e.g. -p batch_size:=1"),
    ("resize:=crop", "parameter resize must be letterbox or stretch, got 'crop'"),
])
def test_a_mistyped_node_parameter_is_one_sentence_with_real_rclpy(tmp_path, ros2_python, parameter, message):
    """ROS 2 parameters are typed: rclpy refuses an integer for a double (InvalidParameterTypeException)."""
    model = _model(tmp_path / "m.onnx", 3)
    paths = [str(Path(__file__).parents[1]), *sys.path]
    node = subprocess.run([ros2_python, "-c", "import sys; from runtime.ros2_node import main; sys.exit(main())",
                           "--ros-args", "-p", f"model_file_path:={model}", "-p", parameter],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    assert node.returncode == 2 and node.stderr.strip() == f"error: {message}"
