"""Where frames come from (OpenCV): video files, cameras, network streams, image files and folders (GStreamer
pipelines: ``runtime.gstreamer``).

Every source yields ``Frame``s in order. A video's corrupt frames are skipped and counted. A camera or stream that
stops delivering is reopened, at most ``reconnects`` times within any ``RECONNECT_WINDOW_SECONDS``: a stream that
drops now and then keeps going, one that stalls again right after each reconnect ends cleanly (``stop_reason``
says why) even if it delivers a frame or two each time.
"""
from __future__ import annotations

import logging
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import OffsegError
from .image_header import jpeg_ends_early
from .limits import check_image_file, check_image_pixels
from .progress import counted
from .video_header import mp4_problem

log = logging.getLogger(__name__)

# Read by OpenCV's imread (GIF and AVIF since OpenCV 4.11; an older OpenCV says it cannot read the file)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".ppm", ".pgm", ".pbm",
                  ".pnm", ".gif", ".avif")
# Photos OpenCV does not decode: HEIC/HEIF (iPhones), JPEG XL, camera raw (DNG of drones and phones, makers' raw)
UNREAD_PHOTO_SUFFIXES = (".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf")
NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
RECONNECT_WINDOW_SECONDS = 60.0
SHOWN_SUBFOLDERS = 5  # subfolder names a message lists before " ..."
MAX_LISTED_SKIPS = 1000  # skipped frames named in a run's summary; the count goes on
_TRUNCATED_WARNED: set[str] = set()  # cut-short JPEGs already named: a training epoch reads each image again


def check_regular_file(path: Path, what: str) -> None:
    """OffsegError unless ``path`` is a regular file (symlinks followed): a FIFO or a device would block a read or
    never end, a folder is not a file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise OffsegError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise OffsegError(f"cannot read {what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in NOT_REGULAR if test(mode)), "a special file")
        raise OffsegError(f"{what} {path} is {kind}, not a regular file")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A uint8 BGR image from a file; raises OffsegError if missing, not a regular file, not an image or a PNG cut
    short, and ImageTooLarge above ``limits.MAX_IMAGE_PIXELS`` (judged from the header before decoding where it can
    be read). A cut-short JPEG is decoded as libjpeg does (its missing part gray), with a warning naming it (once
    per file and process)."""
    path = Path(path)
    check_regular_file(path, "image")
    check_image_file(path)
    if str(path) not in _TRUNCATED_WARNED and jpeg_ends_early(path):
        _TRUNCATED_WARNED.add(str(path))
        log.warning("image %s ends before its end-of-image marker (a cut-short copy or download?): its missing part "
                    "decodes as gray", path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OffsegError(f"{path} is not an image OpenCV can read")
    check_image_pixels(*image.shape[:2], f"image {path}")
    return image


def warn_if_cut_short(path: Path) -> bool:
    """After OpenCV opened the video ``path``: whether it is an MP4 that ends early (its index first, its frames
    cut: it opens, and reads up to the cut), said in a warning naming it."""
    problem = mp4_problem(path)
    if problem:
        log.warning("video %s is incomplete: %s; its frames after the cut cannot be read", path, problem)
    return problem is not None


@dataclass
class Frame:
    index: int
    image: np.ndarray
    name: str  # file stem for images (the whole file name where stems repeat), frame number for video
    origin: object = None  # what the sinks need to know of where it came from (a ROS message's header)


class Source:
    """Base: ``fps`` (None when unknown), ``length`` (None for live sources), counters for the summary."""

    fps: float | None = None
    length: int | None = None
    description: str = ""

    def __init__(self):
        self.skipped = 0
        self.skips: list[dict] = []  # {"frame", "reason"} of the first MAX_LISTED_SKIPS skipped frames
        self.stop_reason = "end of input"

    def skip(self, frame: str | None, reason: str) -> None:
        """Count a frame that cannot be used, and name it with its reason in the run's summary."""
        self.skipped += 1
        if len(self.skips) < MAX_LISTED_SKIPS:
            self.skips.append({"frame": frame, "reason": reason})

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def stop(self) -> None:
        """Called from another thread when the run ends: ``frames`` returns soon, and a source that waits for
        pushed or streamed frames stops waiting."""

    def close(self) -> None:
        pass


class VideoFile(Source):
    MAX_CONSECUTIVE_FAILURES = 25

    def __init__(self, path: Path):
        super().__init__()
        check_regular_file(path, "video")
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            problem = mp4_problem(path)
            raise OffsegError(f"{path} is not a video OpenCV can open{f': {problem}' if problem else ''}")
        size = int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        try:
            check_image_pixels(*size, f"the frames of video {path}")
        except OffsegError:
            self.capture.release()
            raise
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else None
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.length = count if count > 0 else None
        self.description = f"video {path.name}"
        self.cut_short = warn_if_cut_short(path)

    def frames(self) -> Iterator[Frame]:
        index, failures = 0, 0
        while True:
            ok, image = self.capture.read()
            if ok and image is not None:
                failures = 0
                yield Frame(index, image, f"{index:06d}")
                index += 1
                continue
            position = int(self.capture.get(cv2.CAP_PROP_POS_FRAMES))
            if self.length is None or position >= self.length or failures >= self.MAX_CONSECUTIVE_FAILURES:
                if failures >= self.MAX_CONSECUTIVE_FAILURES:
                    self.stop_reason = f"{failures} unreadable frames in a row " + \
                        ("(the file is cut short)" if self.cut_short else "(truncated file?)")
                return
            failures += 1  # a corrupt frame: skip it and try the next one
            self.skip(None, f"not decodable (after frame {index - 1:06d})" if index else "not decodable (before the "
                      "first frame)")

    def close(self) -> None:
        self.capture.release()


def camera_problem(index: int, dev: Path = Path("/dev")) -> str | None:
    """Why V4L2 camera ``index`` (Linux: ``/dev/video<index>``) may not open: no such device (the ones there are
    named), no permission, or open and still refused; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    device = dev / f"video{index}"
    if not device.exists():
        present = sorted((p for p in dev.glob("video*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
        if not present:
            return (f"there is no {device}: this machine shows no V4L2 camera (unplugged? in a container, pass it "
                    f"in: docker run --device {device})")
        return f"there is no {device}; cameras here: {', '.join(map(str, present))} (--camera {present[0].name[5:]})"
    if not os.access(device, os.R_OK | os.W_OK):
        try:
            import grp
            group = f" (group {grp.getgrgid(device.stat().st_gid).gr_name}: add your user to it and log in again)"
        except (KeyError, OSError):
            group = ""
        return f"no permission to open {device}{group}"
    return (f"{device} exists but did not open: another program may hold it, or it is a camera's metadata node (a "
            "camera often shows two: try the next index)")


def check_live_settings(reconnects: int, stall_seconds: float) -> None:
    """OffsegError for a negative ``--reconnects`` or a ``--stall-timeout`` that is not above 0."""
    if reconnects < 0:
        raise OffsegError(f"--reconnects must be 0 or more, got {reconnects}")
    if not stall_seconds > 0:
        raise OffsegError(f"--stall-timeout must be above 0 seconds, got {stall_seconds:g}")


class LiveSource(Source):
    """A camera index or a stream URL; reopened when it stops delivering, at most ``reconnects`` times within any
    ``window_seconds``. Subclasses open other captures: ``_open`` returns one with ``read() -> (ok, image)`` and
    ``release()``, or None (``last_error`` says why); ``_end_reason`` tells an end of input from a drop."""

    def __init__(self, target: int | str, reconnects: int = 5, retry_seconds: float = 1.0,
                 stall_seconds: float = 5.0, window_seconds: float = RECONNECT_WINDOW_SECONDS,
                 description: str | None = None):
        super().__init__()
        if isinstance(target, int) and target < 0:
            raise OffsegError(f"camera index must be 0 or more (0 = first camera), got {target}")
        check_live_settings(reconnects, stall_seconds)
        self.target, self.reconnects, self.retry_seconds = target, reconnects, retry_seconds
        self.window_seconds, self.stall_seconds = window_seconds, stall_seconds
        self.last_error: str | None = None
        self.description = description or (f"camera {target}" if isinstance(target, int)
                                           else f"stream {shown_url(target)}")
        self.capture = self._open()
        if self.capture is None:
            raise OffsegError(f"cannot open {self.description}" + (f": {self.last_error}" if self.last_error else ""))
        self.fps = self._fps()

    def _open(self):
        stall_ms = int(self.stall_seconds * 1000)
        if isinstance(self.target, int):
            capture = cv2.VideoCapture(self.target)
        else:  # a stalled stream must fail a read (and so reconnect) instead of blocking forever
            capture = cv2.VideoCapture(self.target, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, stall_ms,
                                                                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, stall_ms])
        if capture.isOpened():
            return capture
        capture.release()
        if isinstance(self.target, int):
            self.last_error = camera_problem(self.target)
        return None

    def _fps(self) -> float | None:
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        return fps if fps and 0 < fps < 240 else None

    def _end_reason(self) -> str | None:
        """Why a failed read ends the input, or None when it is a drop to reconnect (always, for OpenCV)."""
        return None

    def frames(self) -> Iterator[Frame]:
        index, reconnected = 0, []  # monotonic times of the reconnects within the window
        while True:
            ok, image = self.capture.read() if self.capture is not None else (False, None)
            if ok and image is not None:
                yield Frame(index, image, f"{index:06d}")
                index += 1
                continue
            end_reason = self._end_reason()
            if end_reason:
                self.stop_reason = end_reason
                return
            now = time.monotonic()
            reconnected = [t for t in reconnected if now - t < self.window_seconds]
            if len(reconnected) >= self.reconnects:
                self.stop_reason = (f"{self.description} stopped delivering frames "
                                    f"({counted(self.reconnects, 'reconnect')} within {self.window_seconds:g} s)"
                                    + (f"; last error: {self.last_error}" if self.last_error else ""))
                return
            reconnected.append(now)
            log.warning("%s: no frame%s, reconnecting (%d/%d within %g s)", self.description,
                        f" ({self.last_error})" if self.last_error else "", len(reconnected), self.reconnects,
                        self.window_seconds)
            if self.capture is not None:
                self.capture.release()
            time.sleep(self.retry_seconds)
            self.capture = self._open()

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()


class ImageFiles(Source):
    """One image, or a folder's images (``open_source`` refuses a folder without any, saying where they are). Each
    frame is named after its path below ``root`` without the suffix (``day1/photo`` for ``root/day1/photo.jpg``),
    the suffix kept where two images of one folder share a stem: masks and overlays are named after the frames."""

    def __init__(self, paths: list[Path], description: str, root: Path):
        super().__init__()
        self.paths, self.length, self.description = paths, len(paths), description
        relative = [path.relative_to(root) for path in paths]
        stems = [name.with_suffix("").as_posix() for name in relative]
        counts = Counter(stems)  # x.jpg and x.png both keep their masks: x.jpg.png, x.png.png
        self.names = [stem if counts[stem] == 1 else name.as_posix() for stem, name in zip(stems, relative)]

    def frames(self) -> Iterator[Frame]:
        for index, (path, name) in enumerate(zip(self.paths, self.names)):
            try:
                image = read_image(path)
            except OffsegError as error:
                log.warning("skipping: %s", error)
                self.skip(name, str(error))
                continue
            yield Frame(index, image, name)


def shown_url(url: str) -> str:
    """``url`` with its password hidden (``rtsp://admin:***@cam/live``), for messages, logs and summaries."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not separator or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':')[0]}:***@{host}{slash}{path}"


def open_source(video: Path | None = None, camera: int | None = None, stream: str | None = None,
                image: Path | None = None, images: Path | None = None, reconnects: int = 5,
                stall_seconds: float = 5.0, recursive: bool = False) -> Source:
    """The one source given (the CLI makes them mutually exclusive); ``recursive``: the ``images`` folder's
    subfolders too."""
    if video is not None:
        return VideoFile(Path(video))
    if camera is not None:
        return LiveSource(camera, reconnects, stall_seconds=stall_seconds)
    if stream is not None:
        return LiveSource(stream, reconnects, stall_seconds=stall_seconds)
    if image is not None:
        read_image(image)  # a clear error for a missing or unreadable file
        return ImageFiles([Path(image)], f"image {Path(image).name}", Path(image).parent)
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise OffsegError(f"image folder {folder} does not exist")
        files = folder_files(folder, recursive)
        paths, photos = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES], unread_photos(files)
        if not paths:
            _no_images_here(folder, recursive, photos)
        if photos:
            log.warning("note: left out %s", photos)
        return ImageFiles(paths, f"{folder} and its subfolders" if recursive else str(folder), folder)
    raise OffsegError("no input: give --video, --camera, --stream, --image or --images")


def unread_photos(files: list[Path]) -> str:
    """'' or the photos among ``files`` in formats OpenCV does not decode (which a run leaves out), counted and
    named, with what to do."""
    photos = [p for p in files if p.suffix.lower() in UNREAD_PHOTO_SUFFIXES]
    if not photos:
        return ""
    kinds = ", ".join(sorted({p.suffix.lower() for p in photos}))
    return (f"{counted(len(photos), 'photo')} ({kinds}, e.g. {photos[0].name}) in a format OpenCV does not read: "
            "convert them to JPEG or PNG (heif-convert for HEIC, or a camera's JPEG setting)")


def folder_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The files in ``folder`` (with ``recursive``, in its subfolders too, following links to folders but never
    into one twice), sorted by their path below ``folder``. A subfolder that cannot be read is skipped with a
    warning."""
    if not recursive:
        with os.scandir(folder) as entries:  # the entry knows whether it is a folder: no stat per file
            return sorted(Path(entry.path) for entry in entries if not entry.is_dir())
    found, seen = [], set()

    def unreadable(error: OSError) -> None:
        log.warning("skipping folder %s: %s", error.filename, error.strerror)

    for top, subfolders, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree, or a second link to one folder
            subfolders.clear()
            continue
        seen.add(real)
        subfolders.sort()  # walked in order: of two ways to one folder, the first in sorted order names its images
        found += [Path(top, name) for name in files]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def subfolders_with_images(folder: Path) -> list[str]:
    """The names of ``folder``'s subfolders that hold images of their own, sorted (unlistable ones left out)."""
    def has_images(sub: Path) -> bool:
        try:
            return sub.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in sub.iterdir())
        except OSError:  # a subfolder this user cannot list
            return False

    return sorted(sub.name for sub in folder.iterdir() if has_images(sub))


def shown_subfolders(names: list[str]) -> str:
    """The first SHOWN_SUBFOLDERS of ``names``, joined, and `` ...`` when there are more."""
    return ", ".join(names[:SHOWN_SUBFOLDERS]) + (" ..." if len(names) > SHOWN_SUBFOLDERS else "")


def _no_images_here(folder: Path, recursive: bool, photos: str) -> None:
    """OffsegError for an --images folder without images, naming (when its subfolders are not read) the subfolders
    that hold some, and the ``unread_photos`` sentence."""
    photos = f"; it holds {photos}" if photos else ""
    if recursive:
        raise OffsegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its subfolders{photos}")
    holding = subfolders_with_images(folder)
    where = f"; its subfolders {shown_subfolders(holding)} hold some: give one of them, e.g. --images " \
        f"{folder / holding[0]}, or add --recursive to read them all" if holding else ""
    raise OffsegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}{where}{photos}")
