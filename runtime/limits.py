"""Bounds on sizes taken from files and arguments (images, model metadata and shapes), checked before anything is
allocated: a forged or careless size is one sentence, not a multi-gigabyte allocation. Both limits are module
constants: raise them here (``runtime.limits.MAX_IMAGE_PIXELS = ...``) for larger inputs on a large machine."""
from __future__ import annotations

import math
import os

from .errors import OffsegError
from .image_header import image_header_size, png_ends_early
from .preprocess import SIZE_DIVISOR

MAX_IMAGE_PIXELS = 100_000_000  # per image or model input (a 10000x10000 photograph)
MAX_TENSOR_BYTES = 4 << 30  # per tensor fed to or read from a model (4 GiB)


class ImageTooLarge(OffsegError):
    """An image (or frame size) above MAX_IMAGE_PIXELS."""


def check_image_pixels(height: int, width: int, what: str) -> None:
    """ImageTooLarge when ``what`` (an image, a frame size) of ``height`` x ``width`` is above MAX_IMAGE_PIXELS."""
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"{what} is {height}x{width} ({height * width / 1e6:.0f} megapixels), above the limit of "
                            f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels (runtime.limits.MAX_IMAGE_PIXELS)")


def check_image_file(path: str | os.PathLike, what: str = "image") -> None:
    """Before decoding: ImageTooLarge when the header of the image file ``path`` declares more pixels than the limit
    (decompression bombs; formats whose header is not read are checked once decoded), OffsegError for a PNG cut
    short (libpng would refuse it saying only "Read Error")."""
    size = image_header_size(path)
    if size is not None:
        check_image_pixels(*size, f"{what} {path}")
    if png_ends_early(path):
        raise OffsegError(f"{what} {path} is cut short: it ends before its last PNG chunk (an interrupted copy or "
                          "download?)")


def check_tensor_bytes(shape: tuple[int, ...] | list[int], itemsize: int, what: str) -> None:
    """OffsegError when a tensor of ``shape`` (whole numbers) and ``itemsize`` bytes per value is above
    MAX_TENSOR_BYTES."""
    size = math.prod(shape) * itemsize
    if size > MAX_TENSOR_BYTES:
        raise OffsegError(f"{what} would be a tensor of {list(shape)} ({size / 2**30:,.1f} GiB), above the "
                          f"{MAX_TENSOR_BYTES / 2**30:g} GiB a tensor may take (runtime.limits.MAX_TENSOR_BYTES)")


def check_at_least(*checks: tuple[str, int | None, int]) -> None:
    """OffsegError for the first ``(flag, value, least)`` whose value is below ``least`` (None: not given)."""
    for flag, value, least in checks:
        if value is not None and value < least:
            raise OffsegError(f"{flag} must be at least {least}, got {value}")


def check_input_size(height: int, width: int, what: str = "--input-size") -> None:
    """OffsegError unless ``height`` x ``width`` is a model input size: positive multiples of 32 within the pixel
    limit."""
    if height <= 0 or width <= 0 or height % SIZE_DIVISOR or width % SIZE_DIVISOR:
        raise OffsegError(f"{what} {height} {width}: both sides must be positive multiples of {SIZE_DIVISOR}")
    check_image_pixels(height, width, f"{what} {height} {width}")
