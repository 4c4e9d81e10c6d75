"""The validation report: JSON figures, a markdown page and side-by-side pictures
(image | ground truth | PyTorch | engine | disagreement in red, with a colour legend)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from runtime.draw import palette_for
from runtime.errors import OffsegError
from runtime.metrics import IGNORE_INDEX
from runtime.palettes import colorize
from runtime.sinks import atomic_output, write_image

from .validate import Comparison


TITLE_HEIGHT, LEGEND_ROW, IGNORED_BGR = 22, 18, (96, 96, 96)


def _titled(tile: np.ndarray, title: str) -> np.ndarray:
    strip = np.full((TITLE_HEIGHT, tile.shape[1], 3), 32, np.uint8)
    cv2.putText(strip, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def _labels_bgr(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    tile = np.ascontiguousarray(colorize(np.where(labels == IGNORE_INDEX, 0, labels), palette)[:, :, ::-1])
    tile[labels == IGNORE_INDEX] = IGNORED_BGR
    return tile


def _legend(labels: list[np.ndarray], palette: np.ndarray, classes: tuple[str, ...], width: int) -> np.ndarray:
    """Colour swatches with the names of every class present in any panel, in rows across the picture."""
    present = sorted({int(c) for tile in labels for c in np.unique(tile) if c < len(classes)})
    entries = [(classes[c], tuple(int(v) for v in palette[c][::-1])) for c in present]
    if any((tile == IGNORE_INDEX).any() for tile in labels):
        entries.append(("ignored (not scored)", IGNORED_BGR))
    per_row = max(width // 170, 1)
    rows = max((len(entries) + per_row - 1) // per_row, 1)
    legend = np.full((rows * LEGEND_ROW + 6, width, 3), 32, np.uint8)
    for index, (name, colour) in enumerate(entries):
        x, y = 6 + 170 * (index % per_row), 4 + LEGEND_ROW * (index // per_row)
        cv2.rectangle(legend, (x, y), (x + 12, y + 12), colour, -1)
        cv2.putText(legend, name[:22], (x + 18, y + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return legend


def side_by_side(image: np.ndarray, truth: np.ndarray, reference: np.ndarray, engine: np.ndarray,
                 palette: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """image | ground truth | PyTorch | engine | disagreement (red), titled, with a colour legend below.

    All panels are the image's own size (predictions are made at the image size, so no letterbox padding shows).
    """
    differ = np.zeros_like(image)
    disagree = reference != engine
    differ[disagree] = (0, 0, 255)
    if not disagree.any():
        cv2.putText(differ, "no disagreement", (8, differ.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 1, cv2.LINE_AA)
    tiles = [(image, "image"), (_labels_bgr(truth, palette), "ground truth"),
             (_labels_bgr(reference, palette), "PyTorch"), (_labels_bgr(engine, palette), "engine"),
             (differ, f"disagreement {100 * disagree.mean():.2f}%")]
    row = np.concatenate([_titled(np.ascontiguousarray(tile), title) for tile, title in tiles], axis=1)
    return np.concatenate([row, _legend([truth, reference, engine], palette, classes, row.shape[1])], axis=0)


def _number(value: float):
    return None if value is None or math.isnan(value) else round(float(value), 4)


def write_report(folder: Path, result: Comparison, classes: tuple[str, ...], palette_source, **about) -> dict:
    """Write report.json, report.md and sample_<i>.png under ``folder``; returns the JSON content."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OffsegError(f"cannot create the report folder {folder}: {error.strerror}") from None
    reference, engine = result.reference.scores(), result.engine.scores()
    per_class = [{"class": name, "reference_iou": _number(100 * r), "engine_iou": _number(100 * e),
                  "delta": _number(100 * (e - r))} for name, r, e in zip(classes, reference.iou, engine.iou)]
    summary = {"images": result.images, "mode": result.mode, "labels_only": result.labels_only,
               "reference_miou": 100 * reference.miou, "engine_miou": 100 * engine.miou,
               "miou_delta": 100 * (engine.miou - reference.miou), "reference_aacc": 100 * reference.aacc,
               "engine_aacc": 100 * engine.aacc, "pixel_agreement": 100 * result.agreement,
               "max_logit_diff": None if result.labels_only else result.max_logit_diff,
               "seconds_per_image": {k: v / max(result.images, 1) for k, v in result.seconds.items()}}
    content = {**about, "summary": summary, "per_class": per_class}
    with atomic_output(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
    palette = palette_for(palette_source)
    pictures = [write_image(folder / f"sample_{i}.png", side_by_side(*sample, palette, classes)).name
                for i, sample in enumerate(result.samples)]
    lines = [f"# Validation: {about.get('engine')} ({about.get('precision')}) vs PyTorch", "",
             f"Model {about.get('model')}, dataset {about.get('dataset')}, {result.images} images, {result.mode} "
             f"inference{' (the engine outputs labels: labels compared)' if result.labels_only else ''}, "
             f"backend {about.get('backend')}.", "",
             "| | mIoU | aAcc | s/image |", "|---|---|---|---|",
             f"| PyTorch | {summary['reference_miou']:.2f} | {summary['reference_aacc']:.2f} | "
             f"{summary['seconds_per_image']['reference']:.3f} |",
             f"| engine | {summary['engine_miou']:.2f} | {summary['engine_aacc']:.2f} | "
             f"{summary['seconds_per_image']['engine']:.3f} |", "",
             f"mIoU delta {summary['miou_delta']:+.2f} (bound {about.get('bound')}), pixel agreement "
             f"{summary['pixel_agreement']:.3f}%" + ("" if result.labels_only else
                                                      f", max |logit diff| {result.max_logit_diff:.2e}") + ".", "",
             "| class | PyTorch IoU | engine IoU | delta |", "|---|---|---|---|"]
    lines += [f"| {c['class']} | {c['reference_iou']} | {c['engine_iou']} | {c['delta']} |" for c in per_class]
    lines += ["", "Pictures: image | ground truth | PyTorch | engine | disagreement (red); grey = ignored", ""]
    lines += [f"![sample {i}]({name})" for i, name in enumerate(pictures)]
    with atomic_output(folder / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return content
