"""Colour palettes for label maps (numpy only)."""
from __future__ import annotations

import numpy as np

CITYSCAPES = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def generated_palette(num_classes: int) -> np.ndarray:
    """A distinct, deterministic RGB colour per class (bit-interleaved, as in the Pascal VOC palette)."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for label in range(num_classes):
        value, colour = label + 1, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[label] = colour
    return palette


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 RGB image; labels outside the palette are black."""
    lut = np.zeros((max(len(palette), int(labels.max(initial=0)) + 1), 3), np.uint8)
    lut[:len(palette)] = palette
    return lut[labels]
