"""Where frames come from (OpenCV)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .errors import OffsegError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A uint8 BGR image from a file; raises OffsegError if missing or not an image."""
    path = Path(path)
    if not path.is_file():
        raise OffsegError(f"image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OffsegError(f"{path} is not an image OpenCV can read")
    return image
