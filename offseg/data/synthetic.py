"""Procedural street-like scenes with exact labels: no files, deterministic per seed (numpy + OpenCV only)."""
from __future__ import annotations

import cv2
import numpy as np

CLASSES = ("background", "road", "vehicle", "person", "pole", "sign")


def _texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray, amount: float) -> np.ndarray:
    """A colour field with smooth low-frequency noise."""
    noise = rng.standard_normal((max(height // 16, 2), max(width // 16, 2), 3)).astype(np.float32)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return base[None, None, :] + amount * noise


def render_scene(seed: int, height: int = 512, width: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint8 BGR image (H, W, 3), uint8 labels (H, W) indexing ``CLASSES``)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint8)
    image = _texture(rng, height, width, rng.uniform(90, 200, 3), 25)
    horizon = int(height * rng.uniform(0.35, 0.55))
    road = np.array([[0, height], [width, height], [width * rng.uniform(0.55, 0.7), horizon],
                     [width * rng.uniform(0.3, 0.45), horizon]], np.int32)
    cv2.fillPoly(labels, [road], CLASSES.index("road"))
    for _ in range(rng.integers(2, 7)):
        kind = rng.choice(["vehicle", "person", "pole", "sign"])
        x = int(rng.uniform(0, width))
        y = int(rng.uniform(horizon, height))
        scale = 0.3 + 0.7 * (y - horizon) / max(height - horizon, 1)
        if kind == "vehicle":
            w, h = int(140 * scale), int(70 * scale)
            cv2.rectangle(labels, (x - w // 2, y - h), (x + w // 2, y), CLASSES.index(kind), -1)
        elif kind == "person":
            cv2.ellipse(labels, (x, y - int(45 * scale)), (int(12 * scale), int(45 * scale)), 0, 0, 360,
                        CLASSES.index(kind), -1)
        elif kind == "pole":
            cv2.rectangle(labels, (x, y - int(200 * scale)), (x + max(int(8 * scale), 2), y), CLASSES.index(kind), -1)
        else:
            cv2.circle(labels, (x, y - int(120 * scale)), max(int(22 * scale), 3), CLASSES.index(kind), -1)
    colours = rng.uniform(30, 230, (len(CLASSES), 3))
    for label in range(1, len(CLASSES)):
        mask = labels == label
        if mask.any():
            image[mask] = _texture(rng, height, width, colours[label], 12)[mask]
    image *= np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.2), width, dtype=np.float32)[None, :, None]
    return np.clip(image, 0, 255).astype(np.uint8), labels
