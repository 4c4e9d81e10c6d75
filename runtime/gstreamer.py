"""GStreamer capture through PyGObject's ``Gst`` and an ``appsink``: any pipeline (``--gst``), Jetson CSI cameras,
RTSP streams and video files with the hardware decoder where it exists, USB cameras.

Frames come from the appsink as BGR, whatever OpenCV was built with (pip's wheel has no GStreamer). The source is
a ``LiveSource``: a live pipeline that errors or delivers nothing for ``stall_seconds`` is reopened within the
``--reconnects`` budget; end-of-stream ends a file or a ``--gst`` pipeline (a camera or stream that ends is a drop).
The pipeline strings are pure functions of their arguments, so the Jetson-only ones are tested as strings.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OffsegError
from .sources import RECONNECT_WINDOW_SECONDS, LiveSource, shown_url

log = logging.getLogger(__name__)

TO_BGR = "videoconvert ! video/x-raw,format=BGR"
NVMM_TO_BGR = f"nvvidconv ! video/x-raw,format=BGRx ! {TO_BGR}"  # NVMM (GPU) memory to system memory, then BGR
UPRIGHT = "videoflip video-direction=auto"  # by the orientation tag (a phone's portrait video), as OpenCV turns it
LIVE_APPSINK = "appsink sync=false max-buffers=2 drop=true"  # newest frames: a slow model never lags behind
FILE_APPSINK = "appsink sync=false max-buffers=4"  # every frame: the appsink holds the decoder back
HARDWARE_DECODER = "nvv4l2decoder"
RTSP_LATENCY_MS = 200  # rtspsrc's jitter buffer (its default, 2000 ms, delays every frame by 2 s)
SLICE_SECONDS = 0.1  # a wait for a frame checks for errors, end of stream and cancellation this often
# A file never drops like a camera: a slow frame is a busy CPU, a slow disk or a large software-decoded frame, so
# only a decoder silent this long is an error (files had the camera default, 5 s, which --stall-timeout missed)
FILE_STALL_SECONDS = 60.0
PACKAGES = {  # where a missing element comes from
    "nvarguscamerasrc": "JetPack (nvidia-l4t-gstreamer)", "nvvidconv": "JetPack (nvidia-l4t-gstreamer)",
    "videoconvert": "gstreamer1.0-plugins-base", "appsink": "gstreamer1.0-plugins-base",
    "decodebin": "gstreamer1.0-plugins-base", "filesrc": "libgstreamer1.0-0",
    "rtspsrc": "gstreamer1.0-plugins-good", "v4l2src": "gstreamer1.0-plugins-good",
    "videoflip": "gstreamer1.0-plugins-good",
}
NOT_NEGOTIATED = ("the elements could not agree on a format; the appsink takes BGR, so end the pipeline with "
                  f"'{TO_BGR} ! appsink'")
MISSING_DECODER = "no decoder for this stream: apt install gstreamer1.0-libav (H.264/H.265 in software)"


def load_gst():
    """GStreamer's ``Gst`` module, initialised; OffsegError naming what is missing and how to get it."""
    python = f"Python {sys.version_info.major}.{sys.version_info.minor} at {sys.executable}"
    try:
        import gi
    except ImportError:
        raise OffsegError(f"GStreamer sources need PyGObject (gi), which {python} cannot import: on JetPack or "
                          "Debian/Ubuntu `sudo apt install python3-gi gir1.2-gstreamer-1.0 gstreamer1.0-plugins-"
                          "base gstreamer1.0-plugins-good` and a venv made with --system-site-packages, or in any "
                          "venv `pip install 'offseg-deploy[gstreamer]'` (builds PyGObject; needs apt's "
                          "libgirepository1.0-dev and libcairo2-dev)") from None
    try:
        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError):
        raise OffsegError(f"PyGObject {gi.__version__} ({Path(gi.__file__).parent}) is loaded but GStreamer's "
                          "introspection data is not: `sudo apt install gir1.2-gstreamer-1.0 "
                          "gstreamer1.0-plugins-base`") from None
    Gst.init(None)
    return Gst


def require_elements(Gst, names: list[str], purpose: str) -> None:
    """OffsegError unless every element factory in ``names`` is installed."""
    missing = [name for name in names if Gst.ElementFactory.find(name) is None]
    if missing:
        sources = sorted({PACKAGES.get(name, "a GStreamer plugin package") for name in missing})
        raise OffsegError(f"{purpose} needs the GStreamer element{'s' * (len(missing) > 1)} {', '.join(missing)}, "
                          f"which this machine lacks (from {' / '.join(sources)})")


def quoted(value: str) -> str:
    """A property value as gst-launch syntax reads it back verbatim (spaces, quotes, backslashes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class CsiMode:
    width: int
    height: int
    fps: int


def parse_csi_mode(text: str) -> CsiMode:
    """``WxH@FPS`` (e.g. ``1920x1080@30``); OffsegError otherwise."""
    match = re.fullmatch(r"\s*(\d+)x(\d+)@(\d+)\s*", text)
    if not match or 0 in (mode := CsiMode(*map(int, match.groups()))).__dict__.values():
        raise OffsegError(f"--csi-mode takes WIDTHxHEIGHT@FPS with whole numbers above 0, such as 1920x1080@30; "
                          f"got {text!r}")
    return mode


def csi_camera_pipeline(sensor_id: int, mode: CsiMode | None = None) -> str:
    """A Jetson CSI camera through Argus (ISP in hardware), converted to BGR by the VIC (``nvvidconv``)."""
    size = f",width={mode.width},height={mode.height},framerate={mode.fps}/1" if mode else ""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! video/x-raw(memory:NVMM),format=NV12{size} ! "
            f"{NVMM_TO_BGR} ! {LIVE_APPSINK}")


def usb_camera_pipeline(index: int) -> str:
    """A V4L2 (USB) camera, /dev/video<index>."""
    return f"v4l2src device=/dev/video{index} ! {TO_BGR} ! {LIVE_APPSINK}"


def decode_pipeline(source: str, hardware: bool, live: bool) -> str:
    """``source`` (an element description) decoded by ``nvv4l2decoder`` (any codec it takes, after ``parsebin``)
    or in software by ``decodebin``, then BGR, turned upright by its orientation tag."""
    decode = f"parsebin ! {HARDWARE_DECODER} ! {NVMM_TO_BGR}" if hardware else f"decodebin ! {TO_BGR}"
    return f"{source} ! {decode} ! {UPRIGHT} ! {LIVE_APPSINK if live else FILE_APPSINK}"


def stream_element(url: str) -> str:
    """The source element of a stream URL: ``rtspsrc`` for RTSP, ``urisourcebin`` for anything else."""
    if url.lower().startswith(("rtsp://", "rtsps://")):
        return f"rtspsrc location={quoted(url)} latency={RTSP_LATENCY_MS}"
    return f"urisourcebin uri={quoted(url)}"


def check_user_pipeline(text: str) -> str:
    """A ``--gst`` pipeline that ends in an appsink; OffsegError otherwise."""
    if not re.search(r"(^|!)\s*appsink(\s+[^!]*)?$", text.strip()):
        raise OffsegError("--gst takes a pipeline that ends in an appsink, such as \"videotestsrc ! "
                          f"{TO_BGR} ! appsink\"")
    return text.strip()


def _error_text(message) -> str:
    error, debug = message.parse_error()
    if "not-negotiated" in (debug or ""):
        return f"{error.message} ({NOT_NEGOTIATED})"
    if "missing a plug-in" in error.message:
        return f"{error.message} ({MISSING_DECODER})"
    return error.message.rstrip(".")


def _sinks(Gst, element) -> list:
    """The sink elements of a parsed pipeline (one element alone is returned as it is, not in a bin)."""
    if not isinstance(element, Gst.Bin):
        return [element]
    sinks, iterator = [], element.iterate_sinks()
    while True:  # Gst.Iterator is not a Python iterator without gst-python's overrides
        result, sink = iterator.next()
        if result != Gst.IteratorResult.OK:
            return sinks
        sinks.append(sink)


def _image(Gst, sample) -> np.ndarray:
    """The BGR frame of an appsink sample (rows may be padded to 4 bytes)."""
    structure = sample.get_caps().get_structure(0)
    width, height = structure.get_value("width"), structure.get_value("height")
    buffer = sample.get_buffer()
    ok, info = buffer.map(Gst.MapFlags.READ)
    if not ok:
        raise OffsegError("a GStreamer frame could not be read (buffer not mappable)")
    try:
        data = np.frombuffer(info.data, np.uint8)
        stride = data.size // height
        return data[:stride * height].reshape(height, stride)[:, :width * 3].reshape(height, width, 3).copy()
    finally:
        buffer.unmap(info)


class GstCapture:
    """One running pipeline; ``read() -> (ok, image)`` like an OpenCV capture. ``eos``, ``error`` and ``live`` say
    why a read failed and whether the pipeline is live."""

    def __init__(self, Gst, launch: str, stall_seconds: float, cancelled: threading.Event):
        self.Gst, self.stall_seconds, self.cancelled = Gst, stall_seconds, cancelled
        self.eos, self.error, self.live, self.fps = False, None, False, None
        try:
            self.pipeline = Gst.parse_launch(launch)
        except Exception as error:  # GLib.Error: a syntax error or an unknown element
            raise OffsegError(f"the GStreamer pipeline does not parse: {getattr(error, 'message', error)}") from None
        self.appsink = self._appsink()
        self.pending = None
        self.pipeline.set_state(Gst.State.PLAYING)

    def _appsink(self):
        """The pipeline's appsink, its caps narrowed to BGR (OffsegError if they exclude BGR)."""
        Gst = self.Gst
        appsink = next((sink for sink in _sinks(Gst, self.pipeline) if sink.get_factory().get_name() == "appsink"),
                       None)
        if appsink is None:
            raise OffsegError("the GStreamer pipeline has no appsink to read frames from")
        bgr = Gst.Caps.from_string("video/x-raw,format=BGR")
        caps = appsink.get_property("caps")
        if caps is not None and caps.intersect(bgr).is_empty():
            raise OffsegError(f"the appsink's caps {caps.to_string()} exclude BGR; {NOT_NEGOTIATED}")
        appsink.set_property("caps", bgr if caps is None else caps.intersect(bgr))
        return appsink

    def start(self) -> bool:
        """Wait for the first frame (kept for ``read``); False with ``error`` set when none comes."""
        self.pending = self._pull()
        if self.pending is None:
            return False
        structure = self.pending.get_caps().get_structure(0)
        ok, num, denom = structure.get_fraction("framerate")
        self.fps = num / denom if ok and num > 0 and denom > 0 else None
        query = self.Gst.Query.new_latency()
        self.live = bool(self.pipeline.query(query) and query.parse_latency()[0])
        return True

    def _pull(self):
        """The next sample, or None at end of stream, on an error, after ``stall_seconds`` without one, or when
        cancelled."""
        Gst, bus = self.Gst, self.pipeline.get_bus()
        deadline = time.monotonic() + self.stall_seconds
        while not self.cancelled.is_set():
            sample = self.appsink.emit("try-pull-sample", int(SLICE_SECONDS * Gst.SECOND))
            if sample is not None:
                return sample
            message = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
            if message is not None and message.type == Gst.MessageType.ERROR:
                self.error = _error_text(message)
                return None
            if message is not None or self.appsink.get_property("eos"):
                self.eos = True
                return None
            if time.monotonic() > deadline:
                self.error = f"no frame for {self.stall_seconds:g} s"
                return None
        return None

    def read(self) -> tuple[bool, np.ndarray | None]:
        sample, self.pending = self.pending or self._pull(), None
        return (True, _image(self.Gst, sample)) if sample is not None else (False, None)

    def release(self) -> None:
        self.pipeline.set_state(self.Gst.State.NULL)


class GstSource(LiveSource):
    """Frames of a GStreamer pipeline ending in an appsink. ``eos_ends``: end of stream ends the input (files,
    ``--gst``); otherwise it is a drop, reconnected like a stall or an error (cameras, streams). With ``eos_ends``
    a pipeline that is not live (a file) is never restarted: its first failure ends it."""

    def __init__(self, launch: str, description: str, eos_ends: bool = True, reconnects: int = 5,
                 retry_seconds: float = 1.0, stall_seconds: float = 5.0,
                 window_seconds: float = RECONNECT_WINDOW_SECONDS):
        self.Gst, self.launch, self.eos_ends = load_gst(), launch, eos_ends
        self.cancelled = threading.Event()
        super().__init__(launch, reconnects, retry_seconds, stall_seconds, window_seconds, description)

    def _open(self) -> GstCapture | None:
        capture = GstCapture(self.Gst, self.launch, self.stall_seconds, self.cancelled)
        if capture.start():
            self.last_error = None
            return capture
        self.last_error = capture.error or ("end of stream before the first frame" if capture.eos else None)
        capture.release()
        return None

    def _fps(self) -> float | None:
        return self.capture.fps

    def _end_reason(self) -> str | None:
        capture = self.capture
        if self.cancelled.is_set():
            return "the run stopped"
        if capture is None:
            return None
        self.last_error = capture.error
        if capture.eos and self.eos_ends:
            return "end of input"
        if self.eos_ends and not capture.live:  # a file restarted would repeat its frames
            return f"{self.description}: {capture.error or 'end of stream'}"
        return None

    def stop(self) -> None:
        self.cancelled.set()


def gstreamer_source(gst: str | None = None, csi_camera: int | None = None, csi_mode: str | None = None,
                     video: Path | None = None, stream: str | None = None, camera: int | None = None,
                     reconnects: int = 5, stall_seconds: float = 5.0) -> GstSource:
    """The GStreamer source for the one input given: a custom pipeline or a preset built for this machine
    (hardware decode where ``nvv4l2decoder`` exists, said in the description)."""
    Gst = load_gst()
    live = dict(eos_ends=False, reconnects=reconnects, stall_seconds=stall_seconds)
    if gst is not None:
        return GstSource(check_user_pipeline(gst), "GStreamer pipeline", reconnects=reconnects,
                         stall_seconds=stall_seconds)
    if csi_camera is not None:
        if csi_camera < 0:
            raise OffsegError(f"--csi-camera must be 0 or more (the sensor id), got {csi_camera}")
        require_elements(Gst, ["nvarguscamerasrc", "nvvidconv", "videoconvert"], "--csi-camera")
        mode = parse_csi_mode(csi_mode) if csi_mode else None
        return GstSource(csi_camera_pipeline(csi_camera, mode), f"CSI camera {csi_camera} (nvarguscamerasrc"
                         + (f", {mode.width}x{mode.height}@{mode.fps}" if mode else "") + ")", **live)
    if camera is not None:
        if camera < 0:
            raise OffsegError(f"--camera must be 0 or more (0 = /dev/video0), got {camera}")
        require_elements(Gst, ["v4l2src", "videoconvert"], "a USB camera through GStreamer")
        return GstSource(usb_camera_pipeline(camera), f"USB camera /dev/video{camera} (GStreamer v4l2src)", **live)
    hardware = Gst.ElementFactory.find(HARDWARE_DECODER) is not None
    decoding = (f"hardware decode ({HARDWARE_DECODER})" if hardware
                else f"software decode (decodebin; no {HARDWARE_DECODER} here)")
    required = ["parsebin", HARDWARE_DECODER, "nvvidconv"] if hardware else ["decodebin", "videoconvert"]
    required.append("videoflip")
    if video is not None:
        if not Path(video).is_file():
            raise OffsegError(f"video {video} does not exist")
        require_elements(Gst, ["filesrc", *required], "--video through GStreamer")
        return GstSource(decode_pipeline(f"filesrc location={quoted(str(video))}", hardware, live=False),
                         f"video {Path(video).name} through GStreamer, {decoding}", stall_seconds=FILE_STALL_SECONDS)
    if stream is not None:
        require_elements(Gst, ["rtspsrc" if stream.lower().startswith("rtsp") else "urisourcebin", *required],
                         "--stream through GStreamer")
        return GstSource(decode_pipeline(stream_element(stream), hardware, live=True),
                         f"stream {shown_url(stream)} through GStreamer, {decoding}", **live)
    raise OffsegError("GStreamer reads --gst, --csi-camera, --video, --stream or --camera; give one of them")
