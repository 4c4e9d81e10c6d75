"""Where results go: files written atomically (a partial file never appears under the final name)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .errors import OffsegError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; it replaces ``path`` only on success.

    On any failure the temporary file is removed; an OSError becomes an OffsegError naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OffsegError(f"cannot write {path}: {error.strerror or error}") from error
        raise


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a BGR (or single-channel) image; the format follows the suffix. Raises OffsegError if unwritable."""
    path = Path(path)
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OffsegError(f"cannot encode an image as {path.suffix or 'a file without suffix'}: {path}")
    return path
