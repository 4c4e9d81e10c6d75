"""Calibration images: a folder of images, frames sampled from a video, or built-in synthetic scenes.

Images go through the runtime's own preprocessing (resize to the graph's input size, BGR->RGB, mean/std), so the
statistics describe exactly what the deployed model sees.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import OffsegError
from runtime.preprocess import MEAN_RGB, STD_RGB, to_model_input
from runtime.sources import IMAGE_SUFFIXES, read_image, unread_photos, warn_if_cut_short
from runtime.video_header import mp4_problem

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
RESIZE = "bilinear to the graph input, BGR->RGB"  # the preprocessing below; part of the data key


def _evenly(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def _video_frames(path: Path, count: int) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if not capture.isOpened() or total <= 0:
        problem = mp4_problem(path)
        raise OffsegError(f"cannot read video {path}{f': {problem}' if problem else ''}")
    warn_if_cut_short(path)
    previous = None
    try:
        for index in _evenly(list(range(total)), count):
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            # a seek past the cut of a cut-short file gives the last frame before it again: one copy is used
            if ok and not (previous is not None and np.array_equal(frame, previous)):
                previous = frame
                yield frame
    finally:
        capture.release()


def _sampled_files(source: str | Path, count: int) -> list[Path]:
    """The image files (folder) or the one video file calibration reads from ``source`` (not ``synthetic``);
    OffsegError for a missing path, a folder without images or a file OpenCV cannot open as a video."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            photos = unread_photos([p for p in path.rglob("*") if p.is_file()])
            raise OffsegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}"
                              + (f"; it holds {photos}" if photos else ""))
        return _evenly(files, count)
    if path.is_file():
        return [path]
    raise OffsegError(f"calibration data {path} does not exist (give a folder, a video or '{SYNTHETIC}')")


def data_key(source: str | Path, count: int) -> str:
    """A digest of what calibration on ``source`` would read: each sampled file's name, size and modification time,
    the image count and the preprocessing. Replacing, editing, adding or removing an image changes it; so does
    asking for more images. Raises OffsegError when ``source`` holds nothing to calibrate on (a cheap check)."""
    if str(source) == SYNTHETIC:
        files = [SYNTHETIC]
    else:
        root = Path(source)
        files = [[str(f.relative_to(root)) if root.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns]
                 for f in _sampled_files(source, count)]
        if not root.is_dir():
            _check_video(root)
    content = {"files": files, "count": count, "resize": RESIZE, "mean": MEAN_RGB, "std": STD_RGB}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _check_video(path: Path) -> None:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened() or int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) <= 0:
            raise OffsegError(f"calibration data {path} is neither a folder of images nor a video OpenCV can read")
    finally:
        capture.release()


def calibration_images(source: str | Path, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Up to ``count`` uint8 BGR images from ``source`` (folder, video file or ``synthetic``), evenly sampled."""
    if str(source) == SYNTHETIC:
        from offseg.data.synthetic import render_scene
        for i in range(count):
            yield render_scene(seed + i)[0]
        return
    files = _sampled_files(source, count)
    if Path(source).is_dir():
        for file in files:
            try:
                image = read_image(file)
            except OffsegError as error:  # as offseg-run: one bad file among many is skipped and said
                log.warning("skipping: %s", error)
                continue
            yield image
    else:
        yield from _video_frames(files[0], count)


def calibration_inputs(source: str | Path, count: int, size: tuple[int, int], input_format: str = "normalized",
                       input_layout: str = "nchw") -> list[np.ndarray]:
    """Model inputs (1, 3, H, W) at ``size`` in the graph's ``input_format`` (a key of runtime.preprocess's
    INPUT_FORMATS), or (1, H, W, 3) for an ``input_layout`` nhwc graph: what offseg-run feeds it."""
    inputs = []
    for image in calibration_images(source, count):
        resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        inputs.append(to_model_input([resized], input_format, input_layout))
    if not inputs:
        raise OffsegError(f"no calibration images could be read from {source}")
    return inputs
