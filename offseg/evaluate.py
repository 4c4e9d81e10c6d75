"""mIoU evaluation of a PyTorch model on a dataset split, by the dataset's test protocol (``offseg.protocol``)."""
from __future__ import annotations

import logging

import numpy as np
import torch

from runtime.metrics import IGNORE_INDEX, ConfusionMatrix, Scores
from runtime.progress import progress as report_progress

from .inference import torch_infer
from .protocol import TestProtocol, protocol_logits

log = logging.getLogger(__name__)


def mean_accuracy(scores: Scores) -> float:
    """mmseg's mAcc: the mean over classes present in the ground truth of their pixel accuracy."""
    return float(np.nanmean(scores.accuracy)) if np.isfinite(scores.accuracy).any() else float("nan")


class OutOfRangeLabels:
    """Warns once, naming the file, about labels >= the class count that are not the ignore index.

    Those pixels are left out of the scores; mmseg would also leave them out of the ground truth but count their
    prediction against the predicted class (a false positive), which no correct dataset needs."""

    def __init__(self, num_classes: int):
        self.num_classes, self.warned = num_classes, False

    def check(self, labels: np.ndarray, source: str) -> None:
        if self.warned:
            return
        bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX)
        if bad.any():
            self.warned = True
            log.warning("%s has %d pixel(s) labelled %s, outside the %d classes and not the ignore index %d: "
                        "they are left out of the scores (warned once)", source, int(bad.sum()),
                        ", ".join(str(v) for v in np.unique(labels[bad])[:5]), self.num_classes, IGNORE_INDEX)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, protocol: TestProtocol, max_images: int | None = None,
             progress: bool = True) -> Scores:
    """Scores of ``model`` (switched to eval) on ``dataset`` items (image, labels), untransformed."""
    model.eval()
    infer = torch_infer(model)
    confusion = ConfusionMatrix(dataset.num_classes)
    out_of_range = OutOfRangeLabels(dataset.num_classes)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for index in report_progress(range(count), f"evaluating ({protocol.mode})", unit="image", enabled=progress):
        image, labels = dataset.load(index)
        out_of_range.check(labels, dataset.source(index))
        confusion.update(protocol_logits(image, infer, protocol).argmax(axis=2), labels)
    return confusion.scores()
