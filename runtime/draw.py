"""Annotated frames: colour overlay, optional legend, live FPS / latency text."""
from __future__ import annotations

import cv2
import numpy as np

from .backends import ModelInfo
from .class_names import known_classes
from .palettes import CITYSCAPES, generated_palette
from .postprocess import overlay


def palette_for(info: ModelInfo) -> np.ndarray:
    """RGB colours: the model's own (from its metadata), Cityscapes' for 19 classes, else a generated palette."""
    if len(info.palette) >= info.num_classes:
        return np.array(info.palette, np.uint8)
    if info.num_classes == len(CITYSCAPES):
        return np.array(CITYSCAPES, np.uint8)
    return generated_palette(info.num_classes)


def class_names(info: ModelInfo) -> tuple[str, ...]:
    """The model's own names (metadata), else the released dataset's with that class count, else ``class <i>``."""
    if len(info.classes) == info.num_classes:
        return info.classes
    return known_classes(info.num_classes) or tuple(f"class {i}" for i in range(info.num_classes))


def draw_legend(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, names: tuple[str, ...]) -> None:
    """The classes present in the frame, with their colours, top-right."""
    present = [c for c in np.unique(labels) if c < len(names)][:20]
    x = image.shape[1] - 170
    for row, label in enumerate(present):
        y = 10 + 18 * row
        cv2.rectangle(image, (x, y), (x + 14, y + 14), tuple(int(v) for v in palette[label][::-1]), -1)
        cv2.putText(image, names[label], (x + 20, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)


def annotate(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
             text: str | None = None, names: tuple[str, ...] | None = None) -> np.ndarray:
    image = overlay(frame, labels, palette, alpha)
    if names:
        draw_legend(image, labels, palette, names)
    if text:
        cv2.putText(image, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return image
