"""mIoU evaluation of a PyTorch model on a dataset split, by the dataset's test protocol (``offseg.protocol``)."""
from __future__ import annotations

import numpy as np
import torch

from runtime.metrics import ConfusionMatrix, Scores
from runtime.progress import progress as report_progress

from .inference import torch_infer
from .models.fold import fold_batchnorm
from .protocol import TestProtocol, protocol_logits


def mean_accuracy(scores: Scores) -> float:
    """mmseg's mAcc: the mean over classes present in the ground truth of their pixel accuracy."""
    return float(np.nanmean(scores.accuracy)) if np.isfinite(scores.accuracy).any() else float("nan")


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, protocol: TestProtocol, max_images: int | None = None,
             progress: bool = True) -> Scores:
    """Scores of ``model`` on ``dataset`` items (image, labels), untransformed; run as an eval-mode copy with its
    BatchNorms folded into the convolutions (``model`` itself is left as it is)."""
    infer = torch_infer(fold_batchnorm(model))
    confusion = ConfusionMatrix(dataset.num_classes)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for index in report_progress(range(count), f"evaluating ({protocol.mode})", unit="image", enabled=progress):
        image, labels = dataset.load(index)
        confusion.update(protocol_logits(image, infer, protocol).argmax(axis=2), labels)
    return confusion.scores()
