"""Annotated frames: colour overlay, optional legend, live FPS / latency text."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .backends import ModelInfo
from .class_names import known_classes
from .palettes import CITYSCAPES, generated_palette
from .postprocess import overlay

LEGEND_MARGIN = 6
TEXT_MARGIN = 10


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


def fit_text(text: str, width: int, scale: float) -> str:
    """``text``, shortened with '..' in the middle until it is at most ``width`` pixels wide in OpenCV's font."""
    shown, keep = text, len(text)
    while keep > 4 and cv2.getTextSize(shown, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
        keep -= 1
        shown = f"{text[:keep // 2]}..{text[len(text) - (keep - keep // 2):]}"
    return shown


@dataclass(frozen=True)
class Legend:
    """Where a frame's legend goes: ``lines`` (names, then maybe "+N more") with ``colours`` (BGR, one per class
    line), in a box from x = ``left`` to the right edge and from the top to ``bottom``."""

    lines: list[str]
    colours: list[tuple[int, int, int]]
    left: int
    bottom: int
    row: int
    scale: float


def legend_layout(labels: np.ndarray, palette: np.ndarray, names: tuple[str, ...], frame: tuple[int, int]) -> Legend:
    """The classes present in ``labels``, largest area first, sized to the ``frame`` (H, W): as many rows as its
    height holds (the rest counted on a last "+N more" row), names whole unless one is wider than a third of the
    frame (then shortened in the middle)."""
    counts = np.bincount(labels.ravel(), minlength=len(names))[:len(names)]
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    height, width = frame
    scale = text_scale(height)
    row = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][1] + 8
    fits = max((height - 2 * LEGEND_MARGIN) // row, 1)
    shown = present if len(present) <= fits else present[:fits - 1]
    lines = [fit_text(names[c], width // 3, scale) for c in shown]
    if len(present) > len(shown):
        lines.append(f"+{len(present) - len(shown)} more")
    text_width = max((cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for line in lines), default=0)
    left = max(width - (row + text_width + 2 * LEGEND_MARGIN), 0)
    return Legend(lines, [tuple(int(v) for v in palette[c][::-1]) for c in shown], left,
                  min(2 * LEGEND_MARGIN + row * len(lines), height), row, scale)


def text_scale(height: int) -> float:
    """OpenCV font scale of the text drawn on a frame ``height`` pixels high (the legend's rows, the timing)."""
    return float(np.clip(height / 1200, 0.35, 0.8))


def draw_legend(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, names: tuple[str, ...]) -> int:
    """The classes present in the frame, top-right on a darkened box (``legend_layout``); returns the box's left
    edge (the image's width when nothing was drawn)."""
    legend = legend_layout(labels, palette, names, image.shape[:2])
    if not legend.lines:
        return image.shape[1]
    image[:legend.bottom, legend.left:] = (image[:legend.bottom, legend.left:] * 0.35).astype(np.uint8)
    swatch = legend.row - 6
    for index, line in enumerate(legend.lines):
        x, y = legend.left + LEGEND_MARGIN, LEGEND_MARGIN + legend.row * index
        if index < len(legend.colours):
            cv2.rectangle(image, (x, y + 2), (x + swatch, y + 2 + swatch), legend.colours[index], -1)
        cv2.putText(image, line, (x + swatch + 6, y + swatch), cv2.FONT_HERSHEY_SIMPLEX, legend.scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return legend.left


def draw_text(image: np.ndarray, text: str, right: int) -> None:
    """``text`` top-left, white outlined in black, at the legend's size, made smaller (to 0.3) if it would reach
    ``right`` (the legend's left edge)."""
    scale = text_scale(image.shape[0])
    room = right - 2 * TEXT_MARGIN
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    if width > room:
        scale = max(scale * room / width, 0.3)
    origin = (TEXT_MARGIN, TEXT_MARGIN + cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][1])
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def annotate(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
             text: str | None = None, names: tuple[str, ...] | None = None) -> np.ndarray:
    image = overlay(frame, labels, palette, alpha)
    right = draw_legend(image, labels, palette, names) if names else image.shape[1]
    if text:
        draw_text(image, text, right)
    return image
