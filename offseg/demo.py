"""The README's main job: segment an image with an OffSeg model and save the pictures."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.palettes import colorize, generated_palette
from runtime.postprocess import overlay
from runtime.sinks import write_image
from runtime.sources import read_image

from .checkpoint import build_from_checkpoint
from .data.synthetic import render_scene
from .inference import predict
from .zoo import build_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    model_name: str
    image_size: tuple[int, int]
    classes_seen: int
    files: list[Path]


def run_demo(workdir: Path, model_name: str | None = None, checkpoint: Path | None = None,
             image: Path | None = None, seed: int = 0) -> DemoResult:
    """Segment ``image`` (default: a built-in synthetic scene) and write input, mask and overlay PNGs."""
    if checkpoint is not None:
        model, model_name = build_from_checkpoint(checkpoint, model_name)
    else:
        model_name = model_name or "offseg-t"
        log.info("no --checkpoint: using %s with fresh random weights (seed %d); the mask shows the pipeline "
                 "works, not a trained segmentation", model_name, seed)
        torch.manual_seed(seed)
        model = build_model(model_name).eval()
    picture = read_image(image) if image is not None else render_scene(seed)[0]
    labels = predict(model, picture)
    palette = generated_palette(model.num_classes)
    files = [
        write_image(workdir / "input.png", picture),
        write_image(workdir / "mask.png", np.ascontiguousarray(colorize(labels, palette)[:, :, ::-1])),
        write_image(workdir / "overlay.png", overlay(picture, labels, palette)),
    ]
    return DemoResult(model_name, picture.shape[:2], len(np.unique(labels)), files)
