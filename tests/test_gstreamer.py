"""GStreamer capture: pipeline strings (Jetson elements cannot run here), then a real GStreamer on CPU:
``offseg-run --gst`` on videotestsrc, a video file through decodebin, and an RTSP server on loopback that restarts
mid-stream (reconnect) and stalls (timeout)."""
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.errors import OffsegError
from runtime.gstreamer import (CsiMode, check_user_pipeline, csi_camera_pipeline, decode_pipeline,
                               load_gst, parse_csi_mode, stream_element, usb_camera_pipeline)

pytestmark = pytest.mark.xdist_group("gstreamer")


def test_preset_pipelines_are_the_platform_s_elements_in_order():
    csi = csi_camera_pipeline(1, CsiMode(1280, 720, 60))
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),format=NV12,width=1280,"
                          "height=720,framerate=60/1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
                          "video/x-raw,format=BGR ! appsink")
    assert "width" not in csi_camera_pipeline(0)
    hardware = decode_pipeline(stream_element("rtsp://cam/live"), hardware=True, live=True)
    assert hardware.index("rtspsrc") < hardware.index("parsebin ! nvv4l2decoder ! nvvidconv") < hardware.index(
        "format=BGR ! videoflip video-direction=auto ! appsink")
    assert "drop=true" in hardware and "latency=200" in hardware
    software = decode_pipeline('filesrc location="a b.mp4"', hardware=False, live=False)
    assert "decodebin ! videoconvert" in software and "nvv4l2decoder" not in software and "drop=true" not in software
    assert "format=BGR ! videoflip video-direction=auto ! appsink" in software  # upright by the orientation tag
    assert usb_camera_pipeline(2).startswith("v4l2src device=/dev/video2 ! videoconvert")
    assert stream_element("http://x/y.mjpg").startswith('urisourcebin uri="http://x/y.mjpg"')


def test_the_writer_pipeline_encodes_h264_on_the_jetson_s_encoder_or_x264():
    from runtime.gst_video_sink import even_size, writer_pipeline
    hardware = writer_pipeline("o u.mp4", ".mp4", (480, 640), 30000 / 1001, hardware=True)
    assert hardware.startswith("appsrc name=frames format=time caps=video/x-raw,format=BGR,width=640,height=480,"
                               "framerate=30000/1001 ! videoconvert ! video/x-raw,format=I420 ! nvvidconv ! "
                               "video/x-raw(memory:NVMM),format=I420 ! nvv4l2h264enc ! h264parse ! mp4mux")
    assert hardware.endswith('filesink location="o u.mp4"')
    software = writer_pipeline("o.mkv", ".mkv", (50, 66), 12, hardware=False)
    assert "x264enc" in software and "nvv4l2h264enc" not in software and "matroskamux" in software
    assert "framerate=12/1" in software
    assert even_size((49, 65)) == (50, 66) and even_size((50, 66)) == (50, 66)


def test_a_writer_without_an_output_is_one_sentence(capsys):
    from runtime.cli import main
    assert main(["--engine", "m.onnx", "--images", ".", "--writer", "gstreamer"]) == 2
    assert "--writer gstreamer chooses how --output is encoded; add --output VIDEO" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["1920x1080", "0x720@30", "1280x720@ 30fps", "big"])
def test_a_bad_csi_mode_is_one_sentence(text):
    with pytest.raises(OffsegError, match=r"WIDTHxHEIGHT@FPS"):
        parse_csi_mode(text)


@pytest.mark.parametrize("text", ["videotestsrc ! fakesink", "appsink ! videoconvert", "videotestsrc"])
def test_a_gst_pipeline_must_end_in_an_appsink(text):
    with pytest.raises(OffsegError, match="ends in an appsink"):
        check_user_pipeline(text)


def in_fresh_process(function, *args):
    """``function(*args)`` in a new interpreter: once GStreamer is initialised in a process, a later torch ONNX
    export there aborts (in onnxscript's op registration; seen here with GStreamer 1.22), so no test process that
    may export a model afterwards initialises GStreamer."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def _missing_gstreamer() -> str | None:
    try:
        Gst = load_gst()
    except OffsegError as error:
        return str(error)
    missing = [name for name in ("videotestsrc", "videoconvert", "appsink", "appsrc", "decodebin", "x264enc",
                                 "h264parse", "mp4mux", "avdec_h264", "rtph264pay", "rtspsrc")
               if Gst.ElementFactory.find(name) is None]
    if missing:
        return (f"GStreamer elements missing: {', '.join(missing)} (apt: gstreamer1.0-plugins-base/-good/-ugly/-bad, "
                "gstreamer1.0-libav)")
    try:
        import gi
        gi.require_version("GstRtspServer", "1.0")
    except ValueError:
        return "gst-rtsp-server's introspection data is missing (apt: gir1.2-gst-rtsp-server-1.0)"
    return None


@pytest.fixture(scope="module")
def gst():
    reason = in_fresh_process(_missing_gstreamer)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from exported import export_small_model
    return export_small_model(tmp_path_factory.mktemp("models"), 9, (128, 192))[1]


def frames_of(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    return frames, capture.get(cv2.CAP_PROP_FPS)


def _offseg_run(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io
    from runtime.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_offseg_run_gst_writes_every_frame_at_its_size_and_rate(gst, onnx_model, tmp_path):
    out = tmp_path / "gst.mp4"
    pipeline = "videotestsrc num-buffers=9 ! video/x-raw,width=66,height=50,framerate=12/1 ! videoconvert ! appsink"
    code, stdout, _ = in_fresh_process(_offseg_run, ["--engine", str(onnx_model), "--gst", pipeline, "--output",
                                                     str(out), "--no-progress"])
    frames, fps = frames_of(out)
    assert code == 0 and len(frames) == 9 and frames[0].shape == (50, 66, 3) and fps == pytest.approx(12)
    assert "9 frames" in stdout


def fourcc_of(path) -> str:
    code = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FOURCC))
    return "".join(chr((code >> shift) & 0xFF) for shift in (0, 8, 16, 24)).lower()


@pytest.mark.slow
@pytest.mark.parametrize("width, height", [(66, 50), (65, 49)])
def test_writer_gstreamer_encodes_h264_with_every_frame_at_its_rate(gst, onnx_model, tmp_path, width, height):
    """x264enc here (no nvv4l2h264enc): every frame, its rate, H.264; an odd size is padded to the even one."""
    out = tmp_path / "gst.mp4"
    pipeline = (f"videotestsrc num-buffers=9 ! video/x-raw,width={width},height={height},framerate=12/1 ! "
                "videoconvert ! appsink")
    code, stdout, _ = in_fresh_process(_offseg_run, ["--engine", str(onnx_model), "--gst", pipeline, "--output",
                                                     str(out), "--writer", "gstreamer", "--no-progress"])
    frames, fps = frames_of(out)
    assert code == 0 and "writing gst.mp4 with GStreamer, x264enc (software H.264)" in stdout
    assert len(frames) == 9 and frames[0].shape == (50, 66, 3) and fps == pytest.approx(12)
    assert fourcc_of(out) in ("avc1", "h264") and "9 frames" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gst.mp4"]


@pytest.mark.slow
@pytest.mark.parametrize("pipeline, message", [
    ("videotestsrc ! ! appsink", "the GStreamer pipeline does not parse: syntax error"),
    ("videotestsrc ! nosuchelement ! appsink", 'does not parse: no element "nosuchelement"'),
    ("videotestsrc ! video/x-raw,format=GRAY8 ! appsink", "end the pipeline with 'videoconvert ! video/x-raw,"),
])
def test_a_broken_gst_pipeline_is_one_sentence(gst, onnx_model, pipeline, message):
    code, _, err = in_fresh_process(_offseg_run, ["--engine", str(onnx_model), "--gst", pipeline,
                                                  "--stall-timeout", "2"])
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _file_source_stall(video: str) -> float:
    from runtime.gstreamer import gstreamer_source
    source = gstreamer_source(video=video, stall_seconds=2)
    try:
        return source.stall_seconds
    finally:
        source.close()


def test_a_video_file_is_waited_for_longer_than_a_camera_stall(gst, tmp_path):
    from offseg.data.synthetic import write_video
    from runtime.gstreamer import FILE_STALL_SECONDS
    video = tmp_path / "v.mp4"
    write_video(video, seed=1, frames=2, height=90, width=160, fps=8)
    assert in_fresh_process(_file_source_stall, str(video)) == FILE_STALL_SECONDS >= 30


@pytest.mark.slow
def test_a_video_through_gstreamer_gives_the_frames_opencv_reads(gst, onnx_model, tmp_path):
    from offseg.data.synthetic import write_video
    video = tmp_path / "a clip.mp4"  # a space in the path: the location is quoted
    write_video(video, seed=1, frames=8, height=90, width=160, fps=8)
    out = tmp_path / "out.mp4"
    code, stdout, err = in_fresh_process(_offseg_run, ["--engine", str(onnx_model), "--video", str(video),
                                                       "--capture", "gstreamer", "--output", str(out),
                                                       "--no-progress"])
    assert code == 0 and "software decode (decodebin; no nvv4l2decoder here)" in stdout, err
    frames, _ = frames_of(out)
    assert len(frames) == 8 and frames[0].shape == (90, 160, 3)


def _turned_a_quarter(video: Path) -> None:
    """Give ``video``'s track the display matrix of a phone held upright (90 degrees clockwise), as in its tkhd."""
    import struct
    data = bytearray(video.read_bytes())
    tkhd = data.index(b"tkhd")
    assert data[tkhd + 4] == 0  # version 0: 32-bit times; the matrix follows 36 bytes of fields
    matrix = tkhd + 4 + 4 + 20 + 8 + 8
    assert struct.unpack(">9i", data[matrix:matrix + 36]) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    video.write_bytes(bytes(data))


def _gst_frames(video: str) -> list:
    from runtime.gstreamer import gstreamer_source
    source = gstreamer_source(video=Path(video))
    try:
        return [frame.image for frame in source.frames()]
    finally:
        source.close()


@pytest.mark.slow
def test_a_phone_video_turned_by_its_orientation_tag_reads_upright_as_opencv_reads_it(gst, tmp_path):
    """OpenCV turns such a video upright; GStreamer's decodebin did not (the model saw it lying on its side)."""
    from offseg.data.synthetic import write_video
    video = tmp_path / "portrait.mp4"
    write_video(video, seed=2, frames=4, height=90, width=160, fps=8)
    _turned_a_quarter(video)
    opencv, _ = frames_of(video)
    assert opencv[0].shape == (160, 90, 3)  # OpenCV applies the tag
    frames = in_fresh_process(_gst_frames, str(video))
    assert [f.shape for f in frames] == [f.shape for f in opencv]
    assert max(np.abs(f.astype(int) - o).mean() for f, o in zip(frames, opencv)) < 3  # two decoders, one picture


class RtspServer:
    """gst-rtsp-server on 127.0.0.1 serving live H.264 at /live; ``restart`` drops every client and serves anew on
    the same port; ``stall`` stops the data of the current sessions while their connections stay open."""

    def __init__(self):
        import socket
        import gi
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, GstRtspServer
        with socket.socket() as probe:  # a free port on loopback
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.GstRtspServer, self.valves = GstRtspServer, []
        self.context = GLib.MainContext.new()
        self.loop = GLib.MainLoop.new(self.context, False)
        threading.Thread(target=self.loop.run, daemon=True).start()
        self.start()

    def start(self):
        server = self.GstRtspServer.RTSPServer.new()
        server.set_address("127.0.0.1")
        server.set_service(str(self.port))
        factory = self.GstRtspServer.RTSPMediaFactory.new()
        factory.set_launch("( videotestsrc is-live=true ! video/x-raw,width=96,height=64,framerate=15/1 ! valve "
                           "name=valve ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=5 ! "
                           "rtph264pay name=pay0 config-interval=1 )")
        factory.connect("media-configure", lambda f, media: self.valves.append(
            media.get_element().get_by_name("valve")))
        server.get_mount_points().add_factory("/live", factory)
        deadline = time.monotonic() + 10
        # attach returns 0 while the port is still held by the server just stopped: try again until it is free
        while not (source_id := server.attach(self.context)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert source_id, f"the RTSP test server could not listen on port {self.port} again"
        self.server, self.source_id = server, source_id

    def stop(self):
        self.server.client_filter(lambda server, client: self.GstRtspServer.RTSPFilterResult.REMOVE)
        self.context.find_source_by_id(self.source_id).destroy()
        self.server = None  # the last reference: its listening socket closes

    def restart(self):
        self.stop()
        self.start()

    def stall(self):
        for valve in self.valves:
            valve.set_property("drop", True)

    def close(self):
        self.stop()
        self.loop.quit()

    @property
    def url(self):
        return f"rtsp://127.0.0.1:{self.port}/live"


def _rtsp_restart() -> tuple[str, list[int], tuple, list[str]]:
    import logging
    from runtime.gstreamer import gstreamer_source
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("runtime").addHandler(handler)
    server = RtspServer()
    source = gstreamer_source(stream=server.url, reconnects=2, stall_seconds=2)
    started, frames = time.monotonic(), []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 5:
            server.restart()
        if len(frames) == 20 or time.monotonic() - started > 30:
            break
    source.close()
    server.close()
    return source.description, [frame.index for frame in frames], frames[-1].image.shape, warnings


def test_an_rtsp_stream_reconnects_after_a_server_restart(gst):
    description, indexes, shape, warnings = in_fresh_process(_rtsp_restart)
    assert "software decode" in description
    assert indexes == list(range(20)) and shape == (64, 96, 3)
    assert any("reconnecting (1/2 within 60 s)" in warning for warning in warnings)


def _rtsp_stall() -> tuple[int, float, str]:
    from runtime.gstreamer import gstreamer_source
    server = RtspServer()
    source = gstreamer_source(stream=server.url, reconnects=0, stall_seconds=1)
    started, frames = time.monotonic(), 0
    for _ in source.frames():
        frames += 1
        if frames == 3:
            server.stall()
    source.close()
    server.close()
    return frames, time.monotonic() - started, source.stop_reason


def test_a_stalled_rtsp_stream_times_out_and_ends_within_its_budget(gst):
    frames, seconds, stop_reason = in_fresh_process(_rtsp_stall)
    assert frames >= 3 and seconds < 15
    assert "stopped delivering frames (0 reconnects within 60 s); last error: no frame for 1 s" in stop_reason


def _close_state() -> tuple[int, bool]:
    from runtime.gstreamer import GstSource
    source = GstSource("videotestsrc is-live=true ! videoconvert ! appsink", "live test", eos_ends=False)
    ndim = next(iter(source.frames())).image.ndim
    source.close()
    return ndim, source.capture.pipeline.get_state(0)[1] == source.Gst.State.NULL


def test_a_gst_source_closes_its_pipeline(gst):
    assert in_fresh_process(_close_state) == (3, True)


def test_a_missing_pygobject_is_one_sentence_naming_the_packages(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "gi", None)  # import gi raises ImportError
    with pytest.raises(OffsegError,
                       match=r"cannot import: .*python3-gi gir1.2-gstreamer-1.0.*offseg-deploy\[gstreamer\]"):
        load_gst()


def test_gstreamer_problems_are_named_before_the_model_loads(monkeypatch, tmp_path, capsys):
    import sys
    from runtime.cli import main
    missing_model = str(tmp_path / "absent.onnx")  # never reached: the GStreamer check comes first
    monkeypatch.setitem(sys.modules, "gi", None)
    assert main(["--engine", missing_model, "--gst", "videotestsrc ! videoconvert ! appsink"]) == 2
    assert "need PyGObject (gi)" in capsys.readouterr().err
    assert main(["--engine", missing_model, "--images", str(tmp_path), "--capture", "gstreamer"]) == 2
    assert "images are read by OpenCV" in capsys.readouterr().err
    assert main(["--engine", missing_model, "--csi-camera", "0", "--csi-mode", "720p"]) == 2
    assert "WIDTHxHEIGHT@FPS" in capsys.readouterr().err
    assert main(["--engine", missing_model, "--camera", "0", "--csi-mode", "1280x720@30"]) == 2
    assert "add --csi-camera N" in capsys.readouterr().err


def test_show_with_a_headless_opencv_is_one_sentence(monkeypatch):
    from importlib.metadata import distributions

    from runtime.sinks import WindowSink
    if "opencv-python-headless" in {d.metadata["Name"] for d in distributions()}:  # the pinned wheel is recognised
        with pytest.raises(OffsegError, match="is headless"):
            WindowSink.check_gui()
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "General\n  GUI:                           NONE\n")
    with pytest.raises(OffsegError, match="is headless: install opencv-python instead"):
        WindowSink.check_gui()
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "General\n  GUI:                           GTK3\n")
    monkeypatch.setattr(WindowSink, "try_window", lambda: None)
    WindowSink.check_gui()


@pytest.mark.parametrize("display", [None, ":99"])
def test_show_without_a_display_is_one_sentence_not_a_crash(tmp_path_factory, monkeypatch, display):
    """pip's opencv-python (Qt) aborts the process (SIGABRT, exit 134) when it finds no display: over SSH, in a
    container. A window is tried in a child process first. The pip wheel with a GUI is fetched for this test."""
    import shutil
    import subprocess
    import sys

    from runtime.sinks import WindowSink
    gui = tmp_path_factory.getbasetemp() / "opencv-gui"
    if not (gui / "cv2").is_dir():
        result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(gui),
                                 f"opencv-python=={cv2.__version__}.*"], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"opencv-python could not be fetched: {result.stderr.strip()[-200:]}")
    monkeypatch.syspath_prepend(str(gui))  # what the child imports: the Qt build
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    if display:
        monkeypatch.setenv("DISPLAY", display)  # no X server there
    with pytest.raises(OffsegError) as error:
        WindowSink.try_window()
    message = str(error.value)
    assert message.startswith(f"--show cannot open a window {'on display :99' if display else 'here: this session'}")
    assert "OpenCV's GUI said: qt.qpa.xcb: could not connect to display" in message
    assert message.endswith("use --output or --save-overlays instead")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return  # the window that opens: with a display (apt's xvfb; .ci/run installs it)
    screen = subprocess.Popen([xvfb, ":98", "-screen", "0", "640x480x24"], stderr=subprocess.DEVNULL)
    try:
        monkeypatch.setenv("DISPLAY", ":98")
        deadline = time.monotonic() + 10
        while True:
            try:
                WindowSink.try_window()
                break
            except OffsegError:  # the X server is still starting
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        screen.terminate()
        screen.wait()


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["opencv", "gstreamer"])
def test_sigterm_while_waiting_on_a_gst_pipeline_finalizes_the_video_at_once(gst, onnx_model, tmp_path, writer):
    """One frame, then the next is 10 s away: SIGTERM stops the wait (not the 30 s stall timeout); the GStreamer
    writer gets its end of stream, so the muxer finishes a playable file."""
    import signal
    from test_reliability_runtime import frame_count, offseg_run, partial_files, wait_for
    out = tmp_path / "live.mp4"
    pipeline = "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=1/10 ! videoconvert ! appsink"
    process = offseg_run("--engine", onnx_model, "--gst", pipeline, "--stall-timeout", "30", "--output", out,
                         "--writer", writer, "--no-progress")
    wait_for(lambda: partial_files(tmp_path) or process.poll() is not None)
    time.sleep(0.5)  # the first frame written, the reader waiting for the second
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    assert time.monotonic() - signalled < 5 and "terminated (SIGTERM): finishing the outputs" in stdout
    assert frame_count(out) == 1 and not partial_files(tmp_path)
