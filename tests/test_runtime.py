"""offseg-run on real encoded videos made here: ONNX Runtime output matches PyTorch's labels, outputs are finalized
on every kind of ending, user mistakes get one line. Torch-free on the device side."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from exported import export_small_model
from offseg.data.synthetic import write_video
from offseg.checkpoint import build_from_checkpoint, read_file
from runtime.backends import open_backend
from runtime.preprocess import fit_frame, logits_to_labels, to_model_input
from runtime.cli import main as run_main
from runtime.errors import OffsegError
from runtime.pipeline import Pipeline
from runtime.sinks import VideoSink
from runtime.sources import VideoFile

pytestmark = pytest.mark.xdist_group("runtime")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 9-class OffSeg-T as a checkpoint (PyTorch backend) and its ONNX export (fixed 128x192 input)."""
    return export_small_model(tmp_path_factory.mktemp("models"), 9, (128, 192))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "street.mp4"
    write_video(path, seed=3, frames=12, height=180, width=320, fps=12)
    return path


REAL_VIDEO_CAPTURE = cv2.VideoCapture  # some tests stand a fake camera in for cv2.VideoCapture


def frames_of(path):
    capture = REAL_VIDEO_CAPTURE(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames, capture.get(cv2.CAP_PROP_FPS)
        frames.append(frame)


@pytest.mark.slow
def test_onnx_run_matches_pytorch_labels_and_writes_a_playable_video(models, video, tmp_path, capsys):
    checkpoint, onnx_path = models
    out = tmp_path / "out.mp4"
    assert run_main(["--engine", str(onnx_path), "--video", str(video), "--output", str(out), "--save-masks",
                     str(tmp_path / "onnx"), "--summary", str(tmp_path / "s.json"), "--legend", "--no-progress"]) == 0
    frames, fps = frames_of(out)
    assert len(frames) == 12 and fps == pytest.approx(12) and frames[0].shape == (180, 320, 3)
    model, _ = build_from_checkpoint(checkpoint)
    agreement = []
    for index, frame in enumerate(frames_of(video)[0]):  # PyTorch on the same frames, same preprocessing
        fitted, geometry = fit_frame(frame, (128, 192))
        with torch.no_grad():
            logits = model(torch.from_numpy(to_model_input([fitted], "normalized"))).numpy()
        expected = geometry.labels_to_frame(logits_to_labels(logits, (128, 192))[0])
        actual = cv2.imread(str(tmp_path / "onnx" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        agreement.append((actual == expected).mean())
    assert len(agreement) == 12 and min(agreement) >= 0.999
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"] == 12 and set(summary["stages_ms"]) >= {"decode", "infer", "draw+write"}
    out = capsys.readouterr().out
    assert "FPS" in out and "waits in the queues behind earlier frames" in out  # end-to-end latency explained


@pytest.mark.slow
@pytest.mark.parametrize("suffix, fourcc, size", [(".avi", "MJPG", (157, 203)), (".mkv", "mp4v", (97, 301))])
def test_other_containers_and_odd_sizes(models, tmp_path, suffix, fourcc, size):
    source = tmp_path / f"in{suffix}"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*fourcc), 10, size[::-1])
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out.avi"
    assert run_main(["--engine", str(models[1]), "--video", str(source), "--output", str(out), "--resize", "stretch",
                     "--no-progress"]) == 0
    frames, _ = frames_of(out)
    decoded, _ = frames_of(source)  # codecs may round odd sizes
    assert len(frames) == 5 and frames[0].shape == decoded[0].shape and abs(decoded[0].shape[0] - size[0]) <= 1


@pytest.mark.slow
def test_truncated_video_keeps_what_was_decoded(models, video, tmp_path, capsys):
    data = video.read_bytes()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out.mp4"
    code = run_main(["--engine", str(models[1]), "--video", str(truncated), "--output", str(out), "--no-progress"])
    frames, _ = frames_of(out)
    assert code in (0, 2) and (len(frames) > 0 or code == 2)
    assert "Traceback" not in capsys.readouterr().err
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_interrupt_finalizes_the_video(models, video, tmp_path):
    backend = open_backend(models[1])
    sink = VideoSink(tmp_path / "part.mp4", 12, (180, 320))
    written = []

    def consume(result):
        if len(written) == 4:
            raise KeyboardInterrupt
        sink.write(result.frame.image)
        written.append(result.frame.index)
        return True

    with pytest.raises(KeyboardInterrupt):
        try:
            Pipeline(backend).run(VideoFile(video), consume)
        finally:
            sink.close()
    frames, _ = frames_of(tmp_path / "part.mp4")
    assert written == [0, 1, 2, 3] and len(frames) == 4  # in order, finalized, playable


@pytest.mark.parametrize("argv, message", [
    (["--video", "missing.mp4"], "video missing.mp4 does not exist"),
    (["--camera", "7"], "cannot open camera 7"),
    (["--image", "missing.png"], "image missing.png does not exist"),
    (["--video", "VIDEO", "--batch-size", "4"], "batches of at most 1; use --batch-size 1"),
    (["--video", "VIDEO", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--engine", "FOLDER", "--image", "IMAGE"], "is a folder, not a model file"),
    (["--video", "VIDEO", "--output", "/nonexistent/out.mp4"], "does not exist"),
    (["--video", "VIDEO", "--output", "out.xyz"], "unsupported video format"),
    (["--video", "FOLDER"], "is a folder; for a folder of images use --images"),
    (["--image", "FOLDER"], "is a folder; for a folder of images use --images"),
    (["--images", "VIDEO"], "is a file, not a folder; use --video"),
    (["--images", "IMAGE"], "is a file, not a folder; use --image"),
    (["--video", "IMAGE"], "one.png is an image; use --image"),
    (["--video", "VIDEO", "--reconnects", "2"], "--reconnects applies to a camera or stream"),
    (["--images", "FOLDER", "--stall-timeout", "9"], "a file, folder or bag cannot: remove --stall-timeout"),
    (["--stream", "rtsp://camera.local/live", "--reconnects", "-1"], "--reconnects must be 0 or more, got -1"),
    (["--camera", "0", "--stall-timeout", "0"], "--stall-timeout must be above 0 seconds, got 0"),
    (["--video", "VIDEO", "--device", "cuda"], "--device applies to a .pth checkpoint (PyTorch), not to"),
    (["--video", "VIDEO", "--cuda", "pycuda"], "--cuda applies to a TensorRT engine (.plan), not to"),
    (["--engine", "m.pth", "--video", "VIDEO", "--providers", "CPUExecutionProvider"],
     "--providers applies to an .onnx model (ONNX Runtime), not to m.pth: remove --providers"),
    (["--video", "VIDEO", "--legend", "--summary", "s.json"],
     "--legend only changes the --output video, --save-overlays pictures and --show window, and this run writes or "
     "shows none: drop --legend, or add --output VIDEO, --save-overlays DIR or --show"),
    (["--video", "VIDEO", "--no-overlay-text"], "--no-overlay-text only changes the --output video, --save-overlays"),
    (["--video", "VIDEO", "--alpha", "0.8", "--save-masks", "FOLDER"], "--show window and the --rosbag-out overlays, "),
    (["--video", "VIDEO", "--fps", "10", "--save-masks", "FOLDER"], "--fps only changes the --output video, and this"),
])
def test_user_mistakes_give_one_clear_line(models, video, tmp_path, capsys, argv, message):
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    named = {"VIDEO": str(video), "out.xyz": str(tmp_path / "out.xyz"), "FOLDER": str(tmp_path), "IMAGE": str(image)}
    argv = [named.get(a, a) for a in argv]
    assert run_main(["--engine", str(models[1]), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_package_folder_given_as_the_model_points_at_its_model_file(tmp_path):
    """--engine FOLDER where FOLDER is what offseg-export --format triton / deepstream writes (its file names)."""
    from runtime.backends import open_backend

    version = tmp_path / "repo" / "offseg-t" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").touch()
    package = tmp_path / "package"
    package.mkdir()
    for name in ("offseg-t.onnx", "config_infer_primary_offseg.txt"):
        (package / name).touch()
    for folder, said in ((tmp_path / "repo", f"it is a Triton model repository; its model file is {version}/model.onnx"),
                         (package, f"it is a DeepStream package; its model file is {package}/offseg-t.onnx")):
        with pytest.raises(OffsegError, match="is a folder, not a model file") as error:
            open_backend(folder)
        assert said in str(error.value)


@pytest.mark.parametrize("source", [["--stream", "rtsp://127.0.0.1:1/live"], ["--camera", "7"]])
def test_a_source_that_does_not_open_is_our_sentence_alone(models, tmp_path, source):
    """OpenCV's warnings and FFmpeg's notices ("[tcp @ 0x..] Connection refused") go to the process's stderr from C:
    a child process shows them; --debug brings them back."""
    command = [str(Path(sys.executable).with_name("offseg-run")), "--engine", str(models[1]), *source, "--output",
               str(tmp_path / "out.mp4"), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}  # as set by in-process CLI calls
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert quiet.returncode == 2 and quiet.stderr.startswith("error: cannot open") and quiet.stderr.count("\n") == 1
    loud = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=120, env=env)
    assert "[tcp @" in loud.stderr or "[ WARN" in loud.stderr


def test_engine_problems_are_explained(tmp_path, capsys):
    bogus = tmp_path / "m.onnx"
    bogus.write_bytes(b"not a model")
    assert run_main(["--engine", str(bogus), "--image", str(bogus)]) == 2
    assert "ONNX Runtime cannot load" in capsys.readouterr().err
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    assert run_main(["--engine", str(plan), "--image", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert ("TensorRT is not installed" in err or "sidecar" in err) and "Traceback" not in err
    from runtime.engine_meta import write_sidecar
    rtx = tmp_path / "rtx.fp16.plan"
    rtx.write_bytes(b"engine")
    write_sidecar(rtx, {"tensorrt": {"module": "tensorrt_rtx", "version": "1.7.1.116"}, "gpu": None})
    assert run_main(["--engine", str(rtx), "--image", str(bogus)]) == 2
    err = capsys.readouterr().err  # says which TensorRT built it and what it needs, not "TensorRT is not installed"
    assert "built by TensorRT-RTX 1.7.1.116 on a machine without a GPU" in err and "RTX GPU" in err


def test_a_missing_engine_gets_advice_this_machine_can_follow(tmp_path, capsys, monkeypatch):
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    missing = ["--engine", str(tmp_path / "missing.plan"), "--image", str(image)]
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # a machine without TensorRT: run the ONNX, build elsewhere
    assert run_main(missing) == 2
    err = capsys.readouterr().err
    assert "no TensorRT" in err and "offseg-run --engine MODEL.onnx" in err and "on the device that will run it" in err
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))  # with TensorRT: build it here
    assert run_main(missing) == 2
    assert "build one on this device with: offseg-export --onnx MODEL.onnx --format engine" in capsys.readouterr().err


def test_a_run_that_saves_nothing_says_so(models, video, tmp_path, capsys):
    assert run_main(["--engine", str(models[1]), "--video", str(video), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "only prints the timing table" in err and "this run saves nothing" in out
    assert run_main(["--engine", str(models[1]), "--video", str(video), "--no-progress", "--summary",
                     str(tmp_path / "s.json")]) == 0
    assert "saves nothing" not in "".join(capsys.readouterr())


@pytest.mark.slow
def test_runtime_runs_with_torch_blocked(models, video, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from runtime.cli import main
        code = main(["--engine", {str(models[1])!r}, "--video", {str(video)!r}, "--save-masks",
                     {str(tmp_path / "m")!r}, "--no-progress"])
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "m").glob("*.png"))) == 12


class FlakyCapture:
    """Stands in for cv2.VideoCapture on a camera/stream: each open plays the next session's frame count
    (None: the open fails); a session ends with a failed read, as when a camera drops or a stream stalls."""

    sessions: list = []
    opened: list = []

    def __init__(self, target, *args):
        FlakyCapture.opened.append((target, args))
        self.left = FlakyCapture.sessions.pop(0) if FlakyCapture.sessions else None
        self.frame = 0

    def isOpened(self):
        return self.left is not None

    def read(self):
        if not self.left:
            return False, None
        self.left -= 1
        self.frame += 1
        return True, np.full((120, 160, 3), 10 * self.frame, np.uint8)

    def get(self, prop):
        return 10.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        pass


@pytest.fixture
def flaky_stream(monkeypatch):
    """Cameras (an index) and stream URLs open as FlakyCapture; files keep OpenCV's own capture (the video sink
    reads its finished video back through it)."""
    import runtime.sources
    real = cv2.VideoCapture

    def capture(target, *args):
        flaky = isinstance(target, int) or "://" in str(target)
        return FlakyCapture(target, *args) if flaky else real(target, *args)
    monkeypatch.setattr(runtime.sources.cv2, "VideoCapture", capture)
    monkeypatch.setattr(runtime.sources.time, "sleep", lambda seconds: None)
    FlakyCapture.opened = []
    return FlakyCapture


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="V4L2 device nodes are Linux's")
def test_a_camera_that_does_not_open_says_why_from_its_device_node(tmp_path, monkeypatch):
    """OpenCV says only that the camera did not open; the node under /dev says which of the usual causes it is."""
    from runtime.sources import camera_problem
    assert camera_problem(0, tmp_path) == (f"there is no {tmp_path / 'video0'}: this machine shows no V4L2 camera "
                                           f"(unplugged? in a container, pass it in: docker run --device "
                                           f"{tmp_path / 'video0'})")
    for name in ("video10", "video2", "video3", "video-meta"):
        (tmp_path / name).touch()
    assert camera_problem(0, tmp_path) == (f"there is no {tmp_path / 'video0'}; cameras here: {tmp_path / 'video2'}, "
                                           f"{tmp_path / 'video3'}, {tmp_path / 'video10'} (--camera 2)")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert camera_problem(2, tmp_path).startswith(f"no permission to open {tmp_path / 'video2'} (group ")
    monkeypatch.undo()
    assert camera_problem(2, tmp_path) == (f"{tmp_path / 'video2'} exists but did not open: another program may "
                                           "hold it, or it is a camera's metadata node (a camera often shows two: "
                                           "try the next index)")


def test_a_dropped_stream_is_reopened_a_bounded_number_of_times(flaky_stream):
    from runtime.sources import LiveSource
    flaky_stream.sessions = [3, None, 2, 5]  # 3 frames, a failed reopen, 2 frames, then more than allowed
    source = LiveSource("rtsp://camera.local/live", reconnects=2, retry_seconds=0.5, stall_seconds=2)
    frames = list(source.frames())
    assert [frame.index for frame in frames] == [0, 1, 2, 3, 4]
    assert len(flaky_stream.opened) == 1 + 2  # first open, then two reconnects within the window
    assert "stopped delivering frames (2 reconnects within 60 s)" in source.stop_reason
    # a stall must end a read instead of blocking: the URL is opened with open/read timeouts
    target, (api, params) = flaky_stream.opened[0]
    assert params == [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 2000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 2000]


def test_providers_take_short_names_and_a_missing_one_names_the_available():
    from runtime.backends.ort_backend import choose_providers
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(available, ["cuda", " CPU"]) == available  # --providers cuda,cpu
    assert choose_providers(available, ["CUDAExecutionProvider"]) == ["CUDAExecutionProvider"]
    assert choose_providers(available, None) == available
    with pytest.raises(OffsegError, match=r"^ONNX Runtime here has no TensorrtExecutionProvider \(available: CUDA"):
        choose_providers(["CUDAExecutionProvider"], ["TensorrtExecutionProvider"])
    with pytest.raises(OffsegError, match=r"has no tensorrt "):  # a short name of no provider here stays as given
        choose_providers(available, ["tensorrt"])


def test_a_streams_password_never_reaches_a_message_log_or_summary(flaky_stream, caplog):
    """IP cameras take credentials in the URL; the start-up line, the reconnect warnings, the stop reason (the
    summary's) and the errors showed them."""
    from runtime.sources import LiveSource, shown_url
    flaky_stream.sessions = [1, 1]
    source = LiveSource("rtsp://admin:S3cr@t@cam.local:554/live", reconnects=0, retry_seconds=0.1, stall_seconds=2)
    with caplog.at_level("WARNING", logger="runtime"):
        list(source.frames())
    assert flaky_stream.opened[0][0] == "rtsp://admin:S3cr@t@cam.local:554/live"  # OpenCV gets the real URL
    shown = [source.description, source.stop_reason, caplog.text]
    assert source.description == "stream rtsp://admin:***@cam.local:554/live"
    assert all("S3cr" not in text for text in shown) and "admin:***@cam.local" in source.stop_reason
    assert shown_url("rtsp://cam.local/live") == "rtsp://cam.local/live"  # nothing to hide
    assert shown_url("rtsp://admin@cam.local/live") == "rtsp://admin@cam.local/live"
    assert shown_url("http://u:p@h/x?a=b@c") == "http://u:***@h/x?a=b@c"


@pytest.mark.parametrize("seconds_per_frame, sessions_used", [(0.0, 2), (61.0, 40)])
def test_a_stream_that_stalls_after_every_frame_ends_unless_the_stalls_are_a_window_apart(
        flaky_stream, monkeypatch, seconds_per_frame, sessions_used):
    """--reconnects bounds the reconnects within any 60 s: good frames in between do not reset the count."""
    import runtime.sources
    from runtime.sources import LiveSource
    clock, read = [0.0], FlakyCapture.read

    def timed_read(capture):
        ok, image = read(capture)
        clock[0] += seconds_per_frame if ok else 0.0
        return ok, image
    monkeypatch.setattr(FlakyCapture, "read", timed_read)
    monkeypatch.setattr(runtime.sources.time, "monotonic", lambda: clock[0])
    flaky_stream.sessions = [1] * 40  # one frame, then a stall, every time
    source = LiveSource("rtsp://camera.local/live", reconnects=1)
    assert len(list(source.frames())) == sessions_used
    assert len(flaky_stream.opened) == sessions_used + (seconds_per_frame > 0)  # + the open that found nothing


def test_offseg_run_on_a_stream_that_drops_finalizes_the_video(models, flaky_stream, tmp_path, capsys):
    flaky_stream.sessions = [4, 3]
    out = tmp_path / "stream.mp4"
    assert run_main(["--engine", str(models[1]), "--stream", "rtsp://camera.local/live", "--reconnects", "1",
                     "--output", str(out), "--no-display"]) == 0
    frames, fps = frames_of(out)
    assert len(frames) == 7 and frames[0].shape == (120, 160, 3) and fps == pytest.approx(10)
    assert "stopped delivering frames (1 reconnect within 60 s)" in capsys.readouterr().out



def test_a_model_with_random_weights_is_called_out(models, video, tmp_path, capsys):
    import onnx

    from export.onnx import RANDOM_WEIGHTS
    model = onnx.load(str(models[1]))
    for prop in model.metadata_props:
        if prop.key == "offseg.weights":
            prop.value = RANDOM_WEIGHTS  # as offseg-export writes it without --checkpoint
    random_path = tmp_path / "random.onnx"
    onnx.save(model, str(random_path))
    assert run_main(["--engine", str(models[1]), "--video", str(video), "--no-progress"]) == 0
    assert "RANDOM" not in capsys.readouterr().err
    assert run_main(["--engine", str(random_path), "--video", str(video), "--no-progress"]) == 0
    assert "its weights are RANDOM" in capsys.readouterr().err


def test_a_test_video_is_one_command(tmp_path, capsys):
    """The README's ``python -m offseg.data.synthetic street.mp4``: a playable video of the frames asked for."""
    from offseg.data.synthetic import main as render_main
    out = tmp_path / "street.mp4"
    assert render_main([str(out), "--frames", "6", "--size", "96", "160", "--fps", "10"]) == 0
    frames, fps = frames_of(out)
    assert len(frames) == 6 and frames[0].shape == (96, 160, 3) and fps == pytest.approx(10)
    assert render_main([str(tmp_path / "missing" / "x.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for argv, said in ((["--frames", "0"], "--frames must be at least 1, got 0"),
                       (["--size", "0", "10"], "--size 0 10: both sides must be at least 32"),
                       (["--size", "100000", "100000"], "above the limit of 100 megapixels"),
                       (["--fps", "0"], "--fps must be above 0, got 0")):
        assert render_main([str(tmp_path / "refused.mp4"), *argv]) == 2
        assert said in capsys.readouterr().err
    assert render_main([str(tmp_path)]) == 2  # an existing folder: the output policy
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert render_main([str(tmp_path / "clip")]) == 2  # no suffix: the message says a video file is wanted
    assert "clip names no video format; name a video file ending in one of .mp4" in capsys.readouterr().err
    assert not (tmp_path / "refused.mp4").exists()


def test_offseg_info_says_what_an_onnx_model_is(models, capsys):
    from calibration.files import file_sha256
    from chain.cli import info_main
    from offseg import __version__
    checkpoint, onnx_path = models
    assert info_main([str(onnx_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{onnx_path}: ONNX model of offseg-t, 9 classes, fp32; exported by offseg-export "
                               f"{__version__} (opset "), lines
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in lines[1:]}
    assert rows["weights"] == f"trained (checkpoint sha256 {file_sha256(checkpoint)[:16]}...)"
    assert rows["input"].startswith("batch 1, 128x192, float32 normalized RGB NCHW (mean 123.675 116.28 103.53")
    assert rows["output"] == "logits (N, 9, h, w)" and rows["classes"] == "9 classes, no names (numbered 0-8)"
    assert rows["run"] == f"offseg-run --engine {onnx_path} --video IN.mp4 --output OUT.mp4"


def test_offseg_info_says_what_a_checkpoint_is(models, tmp_path, capsys):
    import reference
    from chain.cli import info_main
    checkpoint = models[0]
    assert info_main([str(checkpoint)]) == 0
    out = capsys.readouterr().out
    values = sum(t.numel() for t in read_file(checkpoint)["state_dict"].values() if t.is_floating_point())
    assert out.startswith(f"{checkpoint}: offseg checkpoint of offseg-t, 9 classes, ") and \
        f"weights  {values / 1e6:.2f} M values, float32" in out, out
    training = tmp_path / "latest.pth"  # what offseg-train writes, in brief
    torch.save({**read_file(checkpoint), "optimizer": {}, "scheduler": {}, "rng": {}, "iteration": 4000,
                "config": {"iters": 160000, "dataset": "ade20k"}, "meta": {"miou": 0.4123}}, training)
    assert info_main([str(training)]) == 0
    out = capsys.readouterr().out
    assert "offseg-train training checkpoint (resumable) of offseg-t" in out
    assert "4,000 of 160,000 iterations on ade20k" in out and "mIoU     41.23 (recorded by offseg-train" in out
    names = [f"class{i}" for i in range(150)]
    official = tmp_path / "official.pth"
    torch.save({"meta": {"dataset_meta": {"classes": names, "palette": [[i, i, i] for i in range(150)]}},
                "state_dict": reference.official_state_dict("offseg-b")}, official)
    assert info_main([str(official)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{official}: mmseg checkpoint (official format) of offseg-b, 150 classes")
    assert "class0, class1, class2, class3, class4, class5, class6, class7, class8, class9, class10, class11 ... and " \
        "138 more; with colours" in out


def test_offseg_info_describes_a_triton_repository(models, tmp_path, capsys):
    from chain.cli import info_main
    from export.cli import main as export_main
    repository = tmp_path / "repo"
    assert export_main(["--onnx", str(models[1]), "--format", "triton", "--output", str(repository)]) == 0
    capsys.readouterr()
    assert info_main([str(repository)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{repository}: Triton model repository holding 1 model; serve it: tritonserver " \
        f"--model-repository {repository}, then offseg-run --triton http://HOST:8000"
    assert lines[1].startswith(f"{repository / 'offseg-t' / '1' / 'model.onnx'}: ONNX model of offseg-t, 9 classes")


@pytest.mark.parametrize("argv, message", [
    (["FOLDER"], "is a folder, not a model file"),
    (["IMAGE"], "cannot tell what one.png is from its suffix: offseg-info describes .pth checkpoints"),
    (["missing.onnx"], "missing.onnx does not exist"),
    (["MODEL", "--model", "offseg-b"], "--model chooses a model to count; MODEL is described as it is: drop --model"),
    (["IMAGE.onnx"], "is not a readable ONNX model"),
])
def test_offseg_info_mistakes_are_one_line(models, tmp_path, capsys, argv, message):
    from chain.cli import info_main
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "one.onnx").write_bytes(image.read_bytes())
    named = {"FOLDER": str(tmp_path), "IMAGE": str(image), "MODEL": str(models[1]),
             "IMAGE.onnx": str(tmp_path / "one.onnx"), "missing.onnx": str(tmp_path / "missing.onnx")}
    assert info_main([named.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.replace("MODEL", str(models[1])) in err and err.count("\n") == 1 and "Traceback" not in err, err
