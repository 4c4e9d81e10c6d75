"""The single definition of OffSeg's input preprocessing (numpy only, shared by PyTorch and the runtime).

The official models were trained on RGB images normalized with ImageNet mean/std in 0-255 units
(mmseg ``SegDataPreProcessor``: ``bgr_to_rgb=True``); OpenCV hands us BGR.
"""
from __future__ import annotations

import numpy as np

from .errors import OffsegError

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32  # every input side must be a multiple of this


def normalize_bgr(image: np.ndarray) -> np.ndarray:
    """uint8 BGR image (H, W, 3) -> float32 normalized RGB tensor (1, 3, H, W)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise OffsegError(f"expected a colour image of shape (H, W, 3), got {image.shape}")
    rgb = image[:, :, ::-1].astype(np.float32)
    normalized = (rgb - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1)[None])


def padded_size(height: int, width: int, divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """Smallest (H, W) >= the given size with both sides multiples of ``divisor``."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor
