"""mmseg's ``CrossEntropyLoss`` as the official configs use it (``avg_non_ignore=False``, loss weight 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.errors import OffsegError
from runtime.metrics import IGNORE_INDEX

FLOAT32_EPS = torch.finfo(torch.float32).eps


def check_label_range(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """OffsegError on labels outside the classes (the ignore index aside). It reads values back: give it the
    loader's host-side tensor (on a CUDA tensor it would synchronise the GPU every step)."""
    valid = labels != ignore_index
    if valid.any() and int(labels[valid].max()) >= num_classes:
        raise OffsegError(f"training labels go up to {int(labels[valid].max())} but the model has "
                          f"{num_classes} classes (255 is the ignore index): check the dataset's labels")


def mmseg_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                        check_labels: bool = True) -> torch.Tensor:
    """Per-pixel cross-entropy summed and divided by *all* pixels, ignored ones included (mmseg's default).

    ``F.cross_entropy`` divides by the non-ignored pixels instead, which weights images with many ignored pixels
    more. ``logits`` (N, K, H, W) at the labels' size (N, H, W). Raises OffsegError on labels outside the classes
    unless ``check_labels`` is False (the caller checked them, see ``check_label_range``).
    """
    if check_labels:
        check_label_range(labels, logits.shape[1], ignore_index)
    per_pixel = F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=ignore_index)
    return per_pixel.sum() / (labels.numel() + FLOAT32_EPS)
