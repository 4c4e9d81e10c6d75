"""Where results go: files written atomically (a partial file never appears under the final name).

Each writer writes to its own temporary file beside the target (a unique name, so concurrent runs never share
one) and renames it over the target when done: with several writers of one path, the last to finish wins whole.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .errors import OffsegError
from .interrupts import raise_pending
from .output_policy import check_writable_folder
from .preprocess import fitted_size

log = logging.getLogger(__name__)

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp creates files 0600, finished outputs get the usual permissions


def unique_temp(path: Path) -> Path:
    """A new, empty, uniquely named hidden file beside ``path`` ending in ``path``'s suffix (writers pick their
    format from it), e.g. ``.out.k3j9x2.partial.mp4``."""
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(handle)
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, folder: bool = False, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; it replaces ``path`` only on success.

    With ``folder``, the yielded path does not exist yet: the writer creates a folder there (a rosbag2), named
    like ``path`` inside a unique hidden folder so that files named after their folder keep the final name; it
    takes ``path`` only if ``path`` does not exist or is an empty folder. On any failure the temporary file or
    folder is removed; an OSError becomes an OffsegError naming ``path`` (a full disk: its folder, the bytes
    needed, ``size`` when the caller knows it, and the bytes free).
    """
    path = Path(path)
    tmp = holder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            holder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
            tmp = holder / path.name
        else:
            tmp = unique_temp(path)
        yield tmp
        raise_pending()  # a stop signal that was swallowed on its way: this output must not look finished
        os.replace(tmp, path)
        if holder is not None:
            holder.rmdir()
    except BaseException as error:
        written = _bytes_in(holder or tmp) if tmp is not None else 0
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)
        elif tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(error, OffsegError) and holder is not None:  # about a file inside: name where it was going
            raise OffsegError(str(error).replace(str(tmp), str(path))) from error
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise OffsegError(disk_full_message(path, size, written)) from error
        if isinstance(error, OSError):
            raise OffsegError(f"cannot write {path}: {error.strerror or error}") from error
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(path: Path, needed: int | None, written: int) -> str:
    """The sentence for a write that found the disk full: the folder, the bytes needed and the bytes free."""
    folder = Path(os.path.abspath(path)).parent
    free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
    need = f"{needed:,} bytes needed" if needed else f"more than the {written:,} bytes written needed"
    return (f"cannot write {path}: the disk holding {folder} is full ({need}, {free:,} bytes free); free some space "
            "or write elsewhere (the previous file, if any, is unchanged)")


def _bytes_in(path: Path) -> int:
    """Bytes of a file, or of the files under a folder (0 when gone)."""
    with contextlib.suppress(OSError):
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    return 0


def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; OffsegError when it cannot (a full disk: the folder,
    the bytes needed and free)."""
    data = data.encode() if isinstance(data, str) else data
    with atomic_output(path, size=len(data)) as tmp:
        handle = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view):]
        finally:
            os.close(handle)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty folder to fill, in place of ``path`` (which must not exist); ``atomic_output``'s folder
    mode renames it to ``path`` only on success and removes it on any failure."""
    path = Path(path)
    if path.exists():
        raise OffsegError(f"{path} already exists; remove it or choose another output folder")
    with atomic_output(path, folder=True) as tmp:
        tmp.mkdir()
        yield tmp


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a BGR (or single-channel) image; the format follows the suffix. Raises OffsegError if unwritable."""
    path = Path(path)
    try:
        encoded, buffer = cv2.imencode(path.suffix or ".", image)
    except cv2.error:
        encoded = False
    if not encoded:
        raise OffsegError(f"cannot encode an image as {path.suffix or 'a file without suffix'}: {path}")
    return write_file(path, buffer.tobytes())


FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}


class VideoSink:
    """An annotated video. Frames go to a temporary file that takes the final name when the sink closes —
    also after Ctrl-C or an error, so the file is always a finalized, playable video of the frames written."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        fourcc = self.check_target(self.path, fps)
        try:
            self.tmp = unique_temp(self.path)
        except OSError as error:
            raise OffsegError(f"cannot write {self.path}: {error.strerror or error}") from None
        self.size = size  # (h, w)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
        if not self.writer.isOpened():  # folder and fps were checked up front: the codec refuses this frame size
            self.tmp.unlink(missing_ok=True)
            raise OffsegError(f"the {fourcc} codec cannot write {size[1]}x{size[0]} frames to {self.path} "
                              f"at {fps:g} fps; use another container ({', '.join(FOURCC)}) or larger frames")
        self.frames = 0

    @staticmethod
    def check_target(path: Path, fps: float | None) -> str:
        """The codec for ``path``; OffsegError for an unknown container, a missing or unwritable folder or fps <= 0
        (checked before a run starts, so the codec error is left for what it really means)."""
        fourcc = FOURCC.get(path.suffix.lower())
        if fourcc is None:
            what = f"unsupported video format {path.suffix!r}" if path.suffix else f"{path} names no video format"
            raise OffsegError(f"{what}; name a video file ending in one of {', '.join(FOURCC)}")
        check_video_target(path, fps)
        return fourcc

    def write(self, image: np.ndarray) -> None:
        self.writer.write(fitted_to_video(image, self.size))
        self.frames += 1

    def close(self) -> None:
        """Finish the video and give it the final name, once it reads back with every frame written; otherwise
        OffsegError (a full disk: the folder and the bytes free) and the previous file is kept."""
        self.writer.release()
        finish_video(self.tmp, self.frames, self.path)


def fitted_to_video(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` as a frame of a video of (h, w) ``size`` (its first frame's): itself when it has that size, else
    scaled to fit with its aspect ratio kept and centred on black (the images of a folder differ in shape)."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    content = tuple(max(side, 1) for side in fitted_size((h, w), size))
    shrunk = size[0] < h or size[1] < w  # the scale is below 1
    resized = cv2.resize(image, content[::-1], interpolation=cv2.INTER_AREA if shrunk else cv2.INTER_LINEAR)
    top, left = (size[0] - content[0]) // 2, (size[1] - content[1]) // 2
    return cv2.copyMakeBorder(resized, top, size[0] - content[0] - top, left, size[1] - content[1] - left,
                              cv2.BORDER_CONSTANT, value=0)


def check_video_target(path: Path, fps: float | None) -> None:
    """OffsegError for a video ``path`` that is a folder or whose folder is missing or unwritable, or fps <= 0."""
    if path.is_dir():
        raise OffsegError(f"--output {path} is a folder; give a video file name such as out.mp4")
    if not path.parent.is_dir():
        raise OffsegError(f"output folder {path.parent} does not exist")
    check_writable_folder(path.parent, f"--output {path}")
    if fps is not None and not fps > 0:
        raise OffsegError(f"the video frame rate must be above 0, got {fps:g}")


def finish_video(tmp: Path, frames: int, target: Path) -> None:
    """Give the finished temporary video ``tmp`` the name ``target`` once it reads back with its ``frames`` frames
    (``check_video``); a video of no frame is dropped. Otherwise OffsegError, ``tmp`` removed, ``target`` kept."""
    if not frames:
        tmp.unlink(missing_ok=True)
        return
    try:
        check_video(tmp, frames, target)
    except OffsegError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def check_video(path: Path, frames: int, target: Path) -> None:
    """OffsegError unless the finished video ``path`` (for ``target``) opens and holds ``frames`` frames."""
    capture = cv2.VideoCapture(str(path))
    try:
        found = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    if found == frames:
        return
    folder = Path(os.path.abspath(target)).parent
    free = shutil.disk_usage(folder).free
    size = _bytes_in(path)
    raise OffsegError(f"the video encoder did not finish {target}: it reads back with {found} of the {frames} "
                      f"frames written ({size:,} bytes written, {free:,} bytes free in {folder}; a full disk does "
                      "this); the previous file, if any, is unchanged")


class FrameFolderSink:
    """One image file per frame in a folder, named after the frame (a name with ``/`` in a subfolder); a subclass
    sets ``suffix`` (the format) and ``option`` (the flag its messages name)."""

    suffix: str
    option: str

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise OffsegError(f"{self.option} {self.folder} is a file; give a folder")
        check_writable_folder(self.folder, f"{self.option} {self.folder}")
        _create_folder(self.folder)
        self.written = 0
        self.names: set[str] = set()  # case-folded: x.PNG and x.png are one file on some disks

    def write(self, name: str, image: np.ndarray) -> None:
        """Write ``name`` + ``suffix``; a name taken earlier in this run (in any case) gets ``~2``, ``~3``, ... so
        that no file replaces another and ``written`` counts files."""
        unique, number = name, 1
        while f"{unique}{self.suffix}".casefold() in self.names:
            number += 1
            unique = f"{name}~{number}"
        if unique != name:
            log.warning("%s: %s%s is taken in this run: writing %s%s", self.option, name, self.suffix, unique,
                        self.suffix)
        target = self.folder / f"{unique}{self.suffix}"
        if target.parent != self.folder:  # a frame of an --images subfolder (--recursive) goes to the same subfolder
            _create_folder(target.parent)
        write_image(target, image)
        self.names.add(f"{unique}{self.suffix}".casefold())
        self.written += 1


def _create_folder(folder: Path) -> None:
    """``folder`` and its missing parents; OffsegError when they cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OffsegError(f"cannot create {folder}: {error.strerror}") from None


class MaskSink(FrameFolderSink):
    """One label PNG per frame (uint8, or uint16 beyond 256 classes) in a folder."""

    suffix = ".png"
    option = "--save-masks"

    def write(self, name: str, labels: np.ndarray) -> None:
        super().write(name, labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16))


class OverlaySink(FrameFolderSink):
    """One annotated frame per frame, as JPEG, in a folder (the pictures of the --output video)."""

    suffix = ".jpg"
    option = "--save-overlays"


WINDOW_PROBE_SECONDS = 30  # a GUI toolkit that has not opened a window by then will not


class WindowSink:
    """A desktop window (needs an OpenCV build with GUI support and a display: ``check_gui`` first; 'q' or Esc
    stops)."""

    def __init__(self, title: str = "offseg-run"):
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise OffsegError("--show needs OpenCV with GUI support (pip install opencv-python instead of "
                              "opencv-python-headless) and a display; use --output or --save-masks instead") from None

    @staticmethod
    def check_gui() -> None:
        """OffsegError unless OpenCV can open a window here: it has a GUI (not pip's opencv-python-headless), and
        its toolkit starts (``try_window``)."""
        match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
        if match and match.group(1).upper() == "NONE":
            raise OffsegError(f"--show needs an OpenCV with a GUI, but the OpenCV loaded ({cv2.__version__}, "
                              f"{Path(cv2.__file__).parent}) is headless: install opencv-python instead of "
                              "opencv-python-headless (on a Jetson, JetPack's python3-opencv), or use --output")
        WindowSink.try_window()

    @staticmethod
    def try_window() -> None:
        """Open and close a window in a child process (this Python, this OpenCV): a GUI toolkit that cannot start
        (no display over SSH or in a container, a missing X library) aborts its process; OffsegError saying why."""
        code = "import cv2; cv2.namedWindow('offseg-run'); cv2.waitKey(1); cv2.destroyAllWindows()"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                   timeout=WINDOW_PROBE_SECONDS)
        except subprocess.TimeoutExpired:
            raise OffsegError(f"--show: OpenCV opened no window within {WINDOW_PROBE_SECONDS} s (a display that "
                              "does not answer?); use --output or --save-overlays instead") from None
        if probe.returncode == 0:
            return
        lines = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
        said = next((line for line in lines if "qt.qpa" in line or "cannot open display" in line),
                    lines[-1] if lines else f"exit code {probe.returncode}")
        display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        where = f"on display {display}" if display else ("here: this session has no display (DISPLAY is not set; "
                                                         "over SSH use ssh -X, on a Jetson's desktop DISPLAY=:0)")
        raise OffsegError(f"--show cannot open a window {where}; OpenCV's GUI said: {said[:200]}; use --output or "
                          "--save-overlays instead")

    def show(self, image: np.ndarray) -> bool:
        """Show a frame; False when the user asked to stop."""
        cv2.imshow(self.title, image)
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow(self.title)
