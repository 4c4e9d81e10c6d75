"""Where results go: image files written atomically (a partial file never appears under the final name)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import cv2
import numpy as np

from .errors import OffsegError


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a BGR (or single-channel) image; the format follows the suffix. Raises OffsegError if unwritable."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(tmp), image):
            raise OffsegError(f"cannot encode an image as {path.suffix or 'a file without suffix'}: {path}")
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OffsegError(f"cannot write {path}: {error.strerror}") from error
    return path
