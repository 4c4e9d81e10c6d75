"""Calibration images: a folder of images, frames sampled from a video, or built-in synthetic scenes.

Images go through the runtime's own preprocessing (resize to the graph's input size, BGR->RGB, mean/std), so the
statistics describe exactly what the deployed model sees.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import OffsegError
from runtime.preprocess import normalize_bgr
from runtime.sources import IMAGE_SUFFIXES, read_image

SYNTHETIC = "synthetic"


def _evenly(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def _video_frames(path: Path, count: int) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if not capture.isOpened() or total <= 0:
        raise OffsegError(f"cannot read video {path}")
    try:
        for index in _evenly(list(range(total)), count):
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if ok:
                yield frame
    finally:
        capture.release()


def calibration_images(source: str | Path, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Up to ``count`` uint8 BGR images from ``source`` (folder, video file or ``synthetic``), evenly sampled."""
    if str(source) == SYNTHETIC:
        from offseg.data.synthetic import render_scene
        for i in range(count):
            yield render_scene(seed + i)[0]
        return
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise OffsegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
        for file in _evenly(files, count):
            yield read_image(file)
    elif path.is_file():
        yield from _video_frames(path, count)
    else:
        raise OffsegError(f"calibration data {path} does not exist (give a folder, a video or '{SYNTHETIC}')")


def calibration_inputs(source: str | Path, count: int, size: tuple[int, int], uint8_input: bool) -> list[np.ndarray]:
    """Model inputs (1, 3, H, W) at ``size``: normalized float32, or uint8 RGB for graphs that normalize inside."""
    inputs = []
    for image in calibration_images(source, count):
        resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        if uint8_input:
            inputs.append(np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1)[None]))
        else:
            inputs.append(normalize_bgr(resized))
    if not inputs:
        raise OffsegError(f"no calibration images could be read from {source}")
    return inputs
