"""Annotated video written through GStreamer: H.264 by the Jetson's hardware encoder (``nvv4l2h264enc``) where it
exists, by ``x264enc`` in software elsewhere. Frames enter through an ``appsrc`` with exact timestamps; the file
is written under a temporary name and renamed when the muxer has finished it (end of stream), also after Ctrl-C
or SIGTERM, so the result is always a playable video of the frames written.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .errors import OffsegError
from .gstreamer import load_gst, quoted
from .sinks import check_video_target, finish_video, fitted_to_video, unique_temp

HARDWARE_ENCODER = "nvv4l2h264enc"
SOFTWARE_ENCODER = "x264enc"
MUXERS = {".mp4": "mp4mux", ".m4v": "mp4mux", ".mov": "qtmux", ".mkv": "matroskamux", ".avi": "avimux"}
FINISH_SECONDS = 30.0  # the longest wait for the muxer to finish the file after the last frame
PACKAGES = {SOFTWARE_ENCODER: "gstreamer1.0-plugins-ugly", "h264parse": "gstreamer1.0-plugins-bad",
            "mp4mux": "gstreamer1.0-plugins-good", "qtmux": "gstreamer1.0-plugins-good",
            "matroskamux": "gstreamer1.0-plugins-good", "avimux": "gstreamer1.0-plugins-good"}


def encoder_for(hardware: bool) -> str:
    """The encoding part of the pipeline, from BGR system memory to an H.264 byte stream."""
    if hardware:  # nvvidconv copies to NVMM (GPU) memory, which the hardware encoder reads
        return (f"videoconvert ! video/x-raw,format=I420 ! nvvidconv ! video/x-raw(memory:NVMM),format=I420 ! "
                f"{HARDWARE_ENCODER} ! h264parse")
    return f"videoconvert ! video/x-raw,format=I420 ! {SOFTWARE_ENCODER} speed-preset=veryfast ! h264parse"


def writer_pipeline(location: str, suffix: str, size: tuple[int, int], fps: float, hardware: bool) -> str:
    """The whole pipeline: appsrc (BGR frames of ``size`` (h, w) at ``fps``) → H.264 → the container of
    ``suffix`` → ``location``."""
    rate = Fraction(fps).limit_denominator(1001)
    caps = f"video/x-raw,format=BGR,width={size[1]},height={size[0]},framerate={rate.numerator}/{rate.denominator}"
    return (f"appsrc name=frames format=time caps={caps} ! {encoder_for(hardware)} ! {MUXERS[suffix]} ! "
            f"filesink location={quoted(location)}")


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) rounded up to even numbers: H.264 in 4:2:0 takes even sizes only (frames are padded by one pixel)."""
    return size[0] + size[0] % 2, size[1] + size[1] % 2


def hardware_encoder_present() -> bool:
    """Whether this machine's GStreamer has the Jetson's hardware H.264 encoder (False without PyGObject)."""
    try:
        Gst = load_gst()
    except OffsegError:
        return False
    return Gst.ElementFactory.find(HARDWARE_ENCODER) is not None and Gst.ElementFactory.find("nvvidconv") is not None


def check_target(path: Path, fps: float | None) -> str:
    """The description of the encoder that will write ``path`` (e.g. ``x264enc (software H.264)``); OffsegError
    for a container without a muxer here, a missing element or folder, or fps <= 0, before the run starts."""
    if path.suffix.lower() not in MUXERS:
        raise OffsegError(f"unsupported video format {path.suffix!r} for --writer gstreamer; use one of "
                          f"{', '.join(MUXERS)}")
    check_video_target(path, fps)
    Gst = load_gst()
    hardware = hardware_encoder_present()
    elements = (["nvvidconv", HARDWARE_ENCODER] if hardware else [SOFTWARE_ENCODER])
    missing = [name for name in ["appsrc", "videoconvert", *elements, "h264parse", MUXERS[path.suffix.lower()]]
               if Gst.ElementFactory.find(name) is None]
    if missing:
        sources = sorted({PACKAGES.get(name, "gstreamer1.0-plugins-base") for name in missing})
        raise OffsegError(f"writing {path.suffix} video through GStreamer needs {', '.join(missing)}, which this "
                          f"machine lacks (apt: {' '.join(sources)}); or use --writer opencv")
    return f"{HARDWARE_ENCODER} (hardware H.264)" if hardware else f"{SOFTWARE_ENCODER} (software H.264)"


class GstVideoSink:
    """``write(image)`` BGR frames of one size, ``close()`` to finish; the interface of ``sinks.VideoSink``."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path, self.size, self.frames = Path(path), size, 0
        self.encoder = check_target(self.path, fps)
        self.Gst = Gst = load_gst()
        try:
            self.tmp = unique_temp(self.path)
        except OSError as error:
            raise OffsegError(f"cannot write {self.path}: {error.strerror or error}") from None
        self.coded_size = even_size(size)
        self.frame_ns = int(round(Gst.SECOND / fps))
        launch = writer_pipeline(str(self.tmp), self.path.suffix.lower(), self.coded_size, fps,
                                 self.encoder.startswith(HARDWARE_ENCODER))
        self.pipeline = Gst.parse_launch(launch)
        self.appsrc = self.pipeline.get_by_name("frames")
        self.pipeline.set_state(Gst.State.PLAYING)

    def _raise_on_error(self, message) -> None:
        if message is not None and message.type == self.Gst.MessageType.ERROR:
            error, _ = message.parse_error()
            self.pipeline.set_state(self.Gst.State.NULL)
            self.tmp.unlink(missing_ok=True)
            raise OffsegError(f"GStreamer could not write {self.path} with {self.encoder}: "
                              f"{error.message.rstrip('.')}")

    def write(self, image: np.ndarray) -> None:
        Gst = self.Gst
        image = fitted_to_video(image, self.size)
        pad_h, pad_w = self.coded_size[0] - self.size[0], self.coded_size[1] - self.size[1]
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
        buffer = Gst.Buffer.new_wrapped(np.ascontiguousarray(image).tobytes())
        buffer.pts, buffer.duration = self.frames * self.frame_ns, self.frame_ns
        self.appsrc.emit("push-buffer", buffer)
        self.frames += 1
        self._raise_on_error(self.pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR))

    def close(self) -> None:
        """End the stream, wait for the muxer to finish the file, read it back (every frame written must be there:
        ``sinks.finish_video``), then rename it over the target; otherwise OffsegError, the previous file kept."""
        Gst = self.Gst
        self.appsrc.emit("end-of-stream")
        message = self.pipeline.get_bus().timed_pop_filtered(int(FINISH_SECONDS * Gst.SECOND),
                                                             Gst.MessageType.EOS | Gst.MessageType.ERROR)
        self._raise_on_error(message)
        self.pipeline.set_state(Gst.State.NULL)
        if message is None:
            self.tmp.unlink(missing_ok=True)
            raise OffsegError(f"GStreamer did not finish {self.path} within {FINISH_SECONDS:g} s; nothing was "
                              "written")
        finish_video(self.tmp, self.frames, self.path)
