"""Segmentation metrics from a confusion matrix (numpy only): mIoU, aAcc, per-class IoU and accuracy.

Matches mmseg's IoUMetric: pixels labelled ``ignore_index`` are skipped; classes absent from both prediction and
ground truth have IoU NaN and are left out of the mean. A prediction outside the classes (DeepStream's -1: no class
above ``segmentation-threshold``) is a miss: it counts against its true class (in that class's union, never in its
intersection) and no other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import OffsegError

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates (ground truth, prediction) pixel counts over any number of label maps."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)  # rows: ground truth, columns: prediction
        self.missed = np.zeros(num_classes, np.int64)  # per ground-truth class: predicted as no class

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
        valid = truth != self.ignore_index
        truth, prediction = truth[valid].astype(np.int64), prediction[valid].astype(np.int64)
        known = truth < self.num_classes
        inside = known & (prediction >= 0) & (prediction < self.num_classes)
        index = truth[inside] * self.num_classes + prediction[inside]
        self.matrix += np.bincount(index, minlength=self.num_classes ** 2).reshape(self.num_classes, -1)
        self.missed += np.bincount(truth[known & ~inside], minlength=self.num_classes)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix
        self.missed += other.missed

    def scores(self) -> Scores:
        """The scores; OffsegError when no pixel was measured (a score of nothing must never pass a gate)."""
        if not self.matrix.any() and not self.missed.any():
            raise OffsegError("no labelled pixel was measured (no images, or every label is the ignore index "
                              f"{self.ignore_index} or above the class count), so there is nothing to score")
        tp = np.diag(self.matrix).astype(np.float64)
        truth, predicted = self.matrix.sum(1) + self.missed, self.matrix.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / (truth + predicted - tp)
            accuracy = tp / truth
        return Scores(iou=iou, accuracy=accuracy, aacc=float(tp.sum() / truth.sum()))


@dataclass(frozen=True)
class Scores:
    iou: np.ndarray  # per class, NaN when the class appears in neither map
    accuracy: np.ndarray  # per class
    aacc: float

    @property
    def miou(self) -> float:
        return float(np.nanmean(self.iou)) if np.isfinite(self.iou).any() else float("nan")

    def as_dict(self, class_names: tuple[str, ...] | None = None) -> dict:
        names = class_names or tuple(str(i) for i in range(len(self.iou)))
        return {"mIoU": 100 * self.miou, "aAcc": 100 * self.aacc,
                "IoU": {n: None if np.isnan(v) else 100 * float(v) for n, v in zip(names, self.iou)}}


def score_text(value: float | None, sign: str = "") -> str:
    """A score in percent (mIoU, an IoU, their change; ``sign="+"`` signs it) as reports print it: two decimals,
    "-" where there is none (None, NaN: a class absent from the images)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:{sign}.2f}"
