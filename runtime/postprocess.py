"""Turning label maps into pictures (numpy + OpenCV)."""
from __future__ import annotations

import numpy as np

from .palettes import colorize


def overlay(image_bgr: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourized labels over the image: (H, W, 3) uint8 BGR."""
    colours = colorize(labels, palette)[:, :, ::-1].astype(np.float32)
    return (image_bgr.astype(np.float32) * (1 - alpha) + colours * alpha).round().astype(np.uint8)
