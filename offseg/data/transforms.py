"""Training augmentations with the semantics of mmseg's pipeline (numpy + OpenCV, on (image, labels) pairs).

RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio) -> RandomCrop(crop, cat_max_ratio=0.75) -> RandomFlip(0.5)
-> PhotoMetricDistortion. Crops smaller than the crop size are padded later, after normalization, as mmseg's data
preprocessor does (``pad_batch``: image 0, labels 255).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from runtime.metrics import IGNORE_INDEX


def rescale_factor(height: int, width: int, scale: tuple[int, int]) -> float:
    """mmcv's keep-ratio rescale: the long edge fits max(scale), the short edge fits min(scale)."""
    return min(max(scale) / max(height, width), min(scale) / min(height, width))


def keep_ratio_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(H, W) after mmcv's keep-ratio rescale to ``scale`` (sides rounded half up, at least 1)."""
    factor = rescale_factor(height, width, scale)
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)


def random_resize(rng, image, labels, scale: tuple[int, int], ratio_range=(0.5, 2.0)):
    ratio = rng.uniform(*ratio_range)
    size = keep_ratio_size(*labels.shape, (int(scale[0] * ratio), int(scale[1] * ratio)))[::-1]
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST))


def random_crop(rng, image, labels, crop: tuple[int, int], cat_max_ratio: float = 0.75, tries: int = 10):
    """A crop in which no single class covers more than ``cat_max_ratio`` of the labelled pixels (if found)."""
    ch, cw = min(crop[0], labels.shape[0]), min(crop[1], labels.shape[1])

    def window():
        y = int(rng.integers(0, labels.shape[0] - ch + 1))
        x = int(rng.integers(0, labels.shape[1] - cw + 1))
        return slice(y, y + ch), slice(x, x + cw)

    box = window()
    for _ in range(tries):
        counts = np.bincount(labels[box].ravel(), minlength=256)[:IGNORE_INDEX]
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
        box = window()
    return image[box], labels[box]


def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``image * alpha + beta`` clipped to 0-255 and truncated back to uint8 (each step of mmseg's distortion)."""
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _contrast(rng, image: np.ndarray) -> np.ndarray:
    return _convert(image, alpha=rng.uniform(0.5, 1.5)) if rng.integers(2) else image


def photometric_distortion(rng, image: np.ndarray) -> np.ndarray:
    """mmseg's PhotoMetricDistortion: each step applied with probability 0.5, in mmseg's order of random draws.

    Brightness +-32; contrast 0.5-1.5 first (mode 1) or last (mode 0); saturation 0.5-1.5 and an integer hue shift
    in [-18, 18) on OpenCV's 0-179 scale, each in its own HSV round trip, done only when that step is drawn.
    """
    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-32, 32))
    contrast_first = rng.integers(2) == 1
    if contrast_first:
        image = _contrast(rng, image)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + int(rng.integers(-18, 18))) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first:
        image = _contrast(rng, image)
    return image


def pad_batch(images: list[np.ndarray], labels: list[np.ndarray], size: tuple[int, int]):
    """Normalized (3, h, w) images and (h, w) labels -> a (N, 3, H, W) batch padded bottom/right to ``size`` with 0
    (after normalization: the mean colour) and (N, H, W) labels padded with 255, as mmseg's ``stack_batch``."""
    height = max([size[0]] + [im.shape[1] for im in images])
    width = max([size[1]] + [im.shape[2] for im in images])
    batch = np.zeros((len(images), 3, height, width), np.float32)
    targets = np.full((len(images), height, width), IGNORE_INDEX, np.uint8)
    for i, (image, label) in enumerate(zip(images, labels)):
        batch[i, :, :image.shape[1], :image.shape[2]] = image
        targets[i, :label.shape[0], :label.shape[1]] = label
    return batch, targets


@dataclass(frozen=True)
class TrainTransform:
    """The training pipeline; randomness comes from the generator passed in (so runs can be replayed).

    Returns the uint8 BGR crop and its labels, unpadded (``pad_batch`` pads after normalization)."""

    crop: tuple[int, int]
    scale: tuple[int, int]
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75

    def __call__(self, image, labels, rng: np.random.Generator):
        image, labels = random_resize(rng, image, labels, self.scale, self.ratio_range)
        image, labels = random_crop(rng, image, labels, self.crop, self.cat_max_ratio)
        if rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        image = photometric_distortion(rng, np.ascontiguousarray(image))
        return image, np.ascontiguousarray(labels)
