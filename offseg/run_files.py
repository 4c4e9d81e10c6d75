"""What a training run keeps on disk: ``latest.pth`` (the resume point, with optimizer state), ``best.pth`` (the
weights of the best validation mIoU so far) and, on request, the last N ``iter_<N>.pth`` checkpoints."""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from runtime.errors import OffsegError

from .checkpoint import read_file, save_checkpoint

log = logging.getLogger(__name__)
ITERATION_FILE = re.compile(r"iter_(\d+)\.pth")


def prune_checkpoints(work_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``iter_<N>.pth`` files of ``work_dir``; returns the deleted ones."""
    numbered = sorted((int(m.group(1)), path) for path in work_dir.glob("iter_*.pth")
                      if (m := ITERATION_FILE.fullmatch(path.name)))
    stale = [path for _, path in numbered[:max(len(numbered) - keep, 0)]]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class BestCheckpoint:
    """``best.pth``: rewritten (weights and classes, no optimizer state) whenever validation beats the best so far,
    which a resumed run reads back from the file."""

    def __init__(self, path: Path, model_name: str, classes: Sequence[str]) -> None:
        self.path, self.model_name, self.classes = path, model_name, list(classes)
        self.miou, self.iteration = -math.inf, None
        if path.is_file():
            try:
                meta = read_file(path)["meta"]
                self.miou, self.iteration = float(meta["miou"]), meta.get("iteration")
            except (OffsegError, KeyError, TypeError, ValueError):
                log.warning("%s is not a best-mIoU checkpoint of offseg-train: it will be replaced", path)

    def offer(self, model: nn.Module, miou: float, iteration: int) -> bool:
        """Keep ``model`` as the best if ``miou`` beats the best so far (NaN never does); returns whether it did."""
        if not miou > self.miou:
            return False
        self.miou, self.iteration = miou, iteration
        save_checkpoint(model, self.path, self.model_name, classes=self.classes, miou=miou, iteration=iteration)
        log.info("new best mIoU %.2f at iteration %d: %s", 100 * miou, iteration, self.path)
        return True


def checkpoint_megabytes(model: nn.Module) -> tuple[float, float]:
    """(training checkpoint, weights-only checkpoint) sizes in MB: AdamW keeps two moments per parameter."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters())
    return (weights + moments) / 1e6, weights / 1e6


def disk_line(model: nn.Module, keep: int) -> str:
    """What the run will keep on disk, for the log before training starts."""
    training, weights = checkpoint_megabytes(model)
    total = (1 + keep) * training + weights
    kept = f" + {keep} iter_<N>.pth (--keep-checkpoints)" if keep else ""
    return (f"checkpoints: latest.pth{kept} at about {training:.0f} MB each (weights + optimizer state) and "
            f"best.pth at about {weights:.0f} MB: about {total:.0f} MB of disk in all")
