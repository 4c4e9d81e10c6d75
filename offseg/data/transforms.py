"""Training augmentations with the semantics of mmseg's pipeline (numpy + OpenCV, on (image, labels) pairs).

RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio) -> RandomCrop(crop, cat_max_ratio=0.75) -> RandomFlip(0.5)
-> PhotoMetricDistortion, then padding to the crop size (image 0, labels 255) as mmseg's data preprocessor does.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from runtime.metrics import IGNORE_INDEX


def rescale_factor(height: int, width: int, scale: tuple[int, int]) -> float:
    """mmcv's keep-ratio rescale: the long edge fits max(scale), the short edge fits min(scale)."""
    return min(max(scale) / max(height, width), min(scale) / min(height, width))


def random_resize(rng, image, labels, scale: tuple[int, int], ratio_range=(0.5, 2.0)):
    ratio = rng.uniform(*ratio_range)
    factor = rescale_factor(*labels.shape, (int(scale[0] * ratio), int(scale[1] * ratio)))
    size = (max(int(labels.shape[1] * factor + 0.5), 1), max(int(labels.shape[0] * factor + 0.5), 1))
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


def photometric_distortion(rng, image):
    """Brightness +-32, contrast 0.5-1.5 (before or after the HSV steps), saturation 0.5-1.5, hue +-18."""
    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        out *= rng.uniform(0.5, 1.5)
    hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19) / 2) % 180  # OpenCV hue is 0-179
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        out *= rng.uniform(0.5, 1.5)
    return np.clip(out, 0, 255).astype(np.uint8)


def pad_to(image, labels, size: tuple[int, int]):
    ph, pw = max(size[0] - labels.shape[0], 0), max(size[1] - labels.shape[1], 0)
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
        labels = cv2.copyMakeBorder(labels, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return image, labels


@dataclass(frozen=True)
class TrainTransform:
    """The training pipeline; randomness comes from the generator passed in (so runs can be replayed)."""

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
        return pad_to(image, np.ascontiguousarray(labels), self.crop)
