"""The validation report: JSON figures, a markdown page and side-by-side pictures
(image | ground truth | PyTorch | engine | disagreement in red, with a colour legend)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from runtime.draw import fit_text, palette_for
from runtime.errors import OffsegError
from runtime.metrics import IGNORE_INDEX, score_text
from runtime.palettes import colorize
from runtime.progress import counted
from runtime.sinks import write_file, write_image

from .validate import Comparison


TITLE_HEIGHT, LEGEND_ROW, LEGEND_ENTRY_WIDTH = 22, 18, 170
ALL_CLASSES_UP_TO = 40  # legends list every class of models with at most this many; larger ones list those present
IGNORED_NOTE = "hatched = ignored (not scored)"


def hatch(shape: tuple[int, int]) -> np.ndarray:
    """Black and white diagonal stripes (BGR): the mark of ignored pixels, which no palette colour can look like."""
    rows, cols = np.indices(shape)
    return np.repeat(np.where((rows + cols) // 3 % 2 == 0, 235, 20).astype(np.uint8)[..., None], 3, axis=2)


def _titled(tile: np.ndarray, title: str) -> np.ndarray:
    strip = np.full((TITLE_HEIGHT, tile.shape[1], 3), 32, np.uint8)
    cv2.putText(strip, fit_text(title, tile.shape[1] - 8, 0.5), (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def _labels_bgr(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    tile = np.ascontiguousarray(colorize(np.where(labels == IGNORE_INDEX, 0, labels), palette)[:, :, ::-1])
    ignored = labels == IGNORE_INDEX
    tile[ignored] = hatch(labels.shape)[ignored]
    return tile


def _legend(labels: list[np.ndarray], palette: np.ndarray, classes: tuple[str, ...], width: int) -> np.ndarray:
    """Colour swatches with names in rows across the picture: every class of the model when it has at most
    ``ALL_CLASSES_UP_TO``, else every class present in a panel; the ignored mark when a panel has it."""
    shown = range(len(classes)) if len(classes) <= ALL_CLASSES_UP_TO else \
        sorted({int(c) for tile in labels for c in np.unique(tile) if c < len(classes)})
    entries: list[tuple[str, np.ndarray]] = [
        (classes[c], np.full((12, 12, 3), palette[c][::-1], np.uint8)) for c in shown]
    if any((tile == IGNORE_INDEX).any() for tile in labels):
        entries.append(("ignored (not scored)", hatch((12, 12))))
    per_row = max(width // LEGEND_ENTRY_WIDTH, 1)
    rows = max((len(entries) + per_row - 1) // per_row, 1)
    legend = np.full((rows * LEGEND_ROW + 6, width, 3), 32, np.uint8)
    for index, (name, swatch) in enumerate(entries):
        x, y = 6 + LEGEND_ENTRY_WIDTH * (index % per_row), 4 + LEGEND_ROW * (index // per_row)
        legend[y:y + 12, x:x + 12] = swatch
        cv2.putText(legend, fit_text(name, LEGEND_ENTRY_WIDTH - 24, 0.42), (x + 18, y + 11), cv2.FONT_HERSHEY_SIMPLEX,
                    0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return legend


def side_by_side(image: np.ndarray, truth: np.ndarray, reference: np.ndarray, engine: np.ndarray,
                 palette: np.ndarray, classes: tuple[str, ...], engine_title: str = "engine") -> np.ndarray:
    """image | ground truth | PyTorch | engine | disagreement (red), titled, with a colour legend below.

    All panels are the image's own size (predictions are made at the image size, so no letterbox padding shows).
    ``engine_title`` names the engine panel (the report gives the file and its precision).
    """
    differ = np.zeros_like(image)
    disagree = reference != engine
    differ[disagree] = (0, 0, 255)
    if not disagree.any():
        cv2.putText(differ, "no disagreement", (8, differ.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 1, cv2.LINE_AA)
    tiles = [(image, "image"), (_labels_bgr(truth, palette), "ground truth"),
             (_labels_bgr(reference, palette), "PyTorch"), (_labels_bgr(engine, palette), engine_title),
             (differ, f"disagreement {100 * disagree.mean():.2f}%")]
    row = np.concatenate([_titled(np.ascontiguousarray(tile), title) for tile, title in tiles], axis=1)
    return np.concatenate([row, _legend([truth, reference, engine], palette, classes, row.shape[1])], axis=0)


def _number(value: float):
    return None if value is None or math.isnan(value) else round(float(value), 4)


def report_content(result: Comparison, classes: tuple[str, ...], **about) -> dict:
    """report.json's content: ``about`` (engine, precision, model, ...), the summary and the per-class IoU."""
    reference, engine = result.reference.scores(), result.engine.scores()
    per_class = [{"class": name, "reference_iou": _number(100 * r), "engine_iou": _number(100 * e),
                  "delta": _number(100 * (e - r))} for name, r, e in zip(classes, reference.iou, engine.iou)]
    summary = {"images": result.images, "mode": result.mode, "labels_only": result.labels_only,
               "reference_miou": 100 * reference.miou, "engine_miou": 100 * engine.miou,
               "miou_delta": 100 * (engine.miou - reference.miou), "reference_aacc": 100 * reference.aacc,
               "engine_aacc": 100 * engine.aacc, "pixel_agreement": 100 * result.agreement,
               "max_logit_diff": None if result.labels_only else result.max_logit_diff,
               "seconds_per_image": {k: v / max(result.images, 1) for k, v in result.seconds.items()}}
    return {**about, "summary": summary, "per_class": per_class}


def write_report(folder: Path, content: dict, result: Comparison, classes: tuple[str, ...], palette_source) -> None:
    """Write report.json, report.md and sample_<i>.png of ``content`` (``report_content``) under ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OffsegError(f"cannot create the report folder {folder}: {error.strerror}") from None
    about, summary, per_class = content, content["summary"], content["per_class"]
    write_file(folder / "report.json", json.dumps(content, indent=2) + "\n")
    palette = palette_for(palette_source)
    engine_title = f"{Path(str(about.get('engine'))).name} ({about.get('precision')})"
    pictures = [write_image(folder / f"sample_{i}.png", side_by_side(*sample, palette, classes, engine_title)).name
                for i, sample in enumerate(result.samples)]
    lines = [f"# Validation: {about.get('engine')} ({about.get('precision')}) vs PyTorch", "",
             f"Model {about.get('model')}, dataset {about.get('dataset')}, {counted(result.images, 'image')}, "
             f"{result.mode} "
             f"inference{' (labels or probabilities out: labels compared)' if result.labels_only else ''}, "
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
    lines += [f"| {c['class']} | {score_text(c['reference_iou'])} | {score_text(c['engine_iou'])} | "
              f"{score_text(c['delta'], '+')} |" for c in per_class]
    lines += ["", f"Pictures: image | ground truth | PyTorch | engine ({engine_title}) | disagreement (red); "
              f"{IGNORED_NOTE}", ""]
    lines += [f"![sample {i}]({name})" for i, name in enumerate(pictures)]
    write_file(folder / "report.md", "\n".join(lines) + "\n")
