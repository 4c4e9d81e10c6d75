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


FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}


class VideoSink:
    """An annotated video. Frames go to a temporary file that takes the final name when the sink closes —
    also after Ctrl-C or an error, so the file is always a finalized, playable video of the frames written."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        fourcc = FOURCC.get(self.path.suffix.lower())
        if fourcc is None:
            raise OffsegError(f"unsupported video format {self.path.suffix!r}; use one of {', '.join(FOURCC)}")
        if not self.path.parent.is_dir():
            raise OffsegError(f"output folder {self.path.parent} does not exist")
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.size = size  # (h, w)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
        if not self.writer.isOpened():
            raise OffsegError(f"cannot write video {self.path} (codec {fourcc})")
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if image.shape[:2] != self.size:
            image = cv2.resize(image, self.size[::-1], interpolation=cv2.INTER_AREA)
        self.writer.write(image)
        self.frames += 1

    def close(self) -> None:
        self.writer.release()
        if self.frames:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class MaskSink:
    """One label PNG per frame (uint8, or uint16 beyond 256 classes) in a folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OffsegError(f"cannot create {self.folder}: {error.strerror}") from None

    def write(self, name: str, labels: np.ndarray) -> None:
        write_image(self.folder / f"{name}.png", labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16))


class WindowSink:
    """A desktop window (needs an OpenCV build with GUI support; 'q' or Esc stops)."""

    def __init__(self, title: str = "offseg-run"):
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise OffsegError("--show needs OpenCV with GUI support (pip install opencv-python instead of "
                              "opencv-python-headless) and a display; use --output or --save-masks instead") from None

    def show(self, image: np.ndarray) -> bool:
        """Show a frame; False when the user asked to stop."""
        cv2.imshow(self.title, image)
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow(self.title)
