"""The validation report: JSON figures, a markdown page and side-by-side pictures
(image | PyTorch | engine | disagreement in red)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from runtime.draw import palette_for
from runtime.errors import OffsegError
from runtime.palettes import colorize
from runtime.sinks import atomic_output, write_image

from .validate import Comparison


def side_by_side(image: np.ndarray, reference: np.ndarray, engine: np.ndarray, palette: np.ndarray) -> np.ndarray:
    differ = np.zeros_like(image)
    differ[reference != engine] = (0, 0, 255)
    tiles = [image, colorize(reference, palette)[:, :, ::-1], colorize(engine, palette)[:, :, ::-1], differ]
    return np.concatenate([np.ascontiguousarray(t) for t in tiles], axis=1)


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
    pictures = [write_image(folder / f"sample_{i}.png", side_by_side(*sample, palette)).name
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
    lines += ["", "Pictures: image | PyTorch | engine | disagreement (red)", ""]
    lines += [f"![sample {i}]({name})" for i, name in enumerate(pictures)]
    with atomic_output(folder / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return content
