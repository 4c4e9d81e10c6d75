"""The test protocol of ``offseg.protocol`` run with torch tensors on the model's device: what ``offseg-eval`` uses.

Same steps and order as the numpy form: keep-ratio resize (OpenCV, on the host, as the dataset's pipeline does),
normalization, optional ``size_divisor`` padding, whole or slide inference with windows padded to multiples of 32,
logits resized bilinearly (align_corners=False) back to the original size, argmax; and the confusion matrix of
``runtime.metrics``. Only the uint8 image and its labels cross to the device; normalization, resizing, argmax and
counting stay there, with no host read until the scores are asked for. So a GPU evaluation is not held up by
resizing K full-resolution logit maps on the CPU (150 classes at 512x683: 0.9 s with OpenCV, measured), and the
logits are resized with torch's ``interpolate``, as mmseg does.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from runtime.metrics import IGNORE_INDEX, ConfusionMatrix
from runtime.preprocess import MEAN_RGB, STD_RGB, padded_size, sliding_windows

from .names import WINDOW_BATCH
from .protocol import TestProtocol


def normalized(image: torch.Tensor) -> torch.Tensor:
    """uint8 BGR (H, W, 3) on any device -> float32 normalized RGB (1, 3, H, W), computed as ``normalize_bgr``."""
    mean, std = _mean_std(image.device)
    return ((image.flip(2).float() - mean) / std).permute(2, 0, 1).unsqueeze(0).contiguous()


@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 mean and std on ``device``, copied there once (a copy from the host waits for the GPU)."""
    return (torch.tensor(MEAN_RGB, dtype=torch.float32).to(device),
            torch.tensor(STD_RGB, dtype=torch.float32).to(device))


def forward_window(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, h, w) normalized input -> (N, K, h, w) float32 logits at the input size, padded with 0 to multiples
    of 32 for the forward when needed (``protocol.forward_window``)."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w)
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))
    # The head's output has channels-last strides; torch's CPU bilinear resize of that layout into NCHW was 10x
    # slower than a copy to NCHW and the resize (0.89 s against 0.08 s for 150 classes at 512x704, measured).
    logits = model(x.to(next(model.parameters()).dtype)).float().contiguous()
    return F.interpolate(logits, size=(ph, pw), mode="bilinear", align_corners=False)[..., :h, :w]


def slide(model: torch.nn.Module, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int],
          window_batch: int = WINDOW_BATCH) -> torch.Tensor:
    """mmseg ``slide_inference``: (1, K, H, W) logits, overlapping windows averaged (``protocol.slide``).

    An image's windows all have one shape, so up to ``window_batch`` of them run as one batched forward (mmseg runs
    them one by one; the model has no cross-sample operation, so only the rounding of the kernels can differ)."""
    h, w = x.shape[-2:]
    windows = list(sliding_windows(h, w, crop, stride))
    total, count = None, torch.zeros((1, 1, h, w), dtype=torch.float32, device=x.device)
    for start in range(0, len(windows), window_batch):
        group = windows[start:start + window_batch]
        logits = forward_window(model, torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group]))
        if total is None:
            total = torch.zeros((1, logits.shape[1], h, w), dtype=torch.float32, device=x.device)
        for (y1, y2, x1, x2), window in zip(group, logits):
            total[0, :, y1:y2, x1:x2] += window
            count[0, :, y1:y2, x1:x2] += 1
    return total / count


def protocol_logits(resized: torch.Tensor, size: tuple[int, int], model: torch.nn.Module,
                    protocol: TestProtocol, window_batch: int = WINDOW_BATCH) -> torch.Tensor:
    """(1, K, H, W) float32 logits at the original ``size`` (H, W) of an image already resized by the protocol
    (``protocol.test_resize``), given as uint8 BGR (h, w, 3) on the model's device; slide windows batched by up to
    ``window_batch``."""
    x = normalized(resized)
    h, w = x.shape[-2:]
    if protocol.size_divisor:
        ph, pw = padded_size(h, w, protocol.size_divisor)
        x = F.pad(x, (0, pw - w, 0, ph - h))
    if protocol.mode == "whole":
        logits = forward_window(model, x)
    else:
        logits = slide(model, x, protocol.crop, protocol.stride, window_batch)
    logits = logits[..., :h, :w]
    if tuple(logits.shape[-2:]) == tuple(size):  # a resize to the same size is the identity
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class DeviceConfusion:
    """``runtime.metrics.ConfusionMatrix`` counted on a torch device without reading anything back per update
    (no boolean indexing, no ``bincount``: both wait for the GPU)."""

    def __init__(self, num_classes: int, device: torch.device, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        # (truth, prediction) pairs, then per truth class a prediction outside the classes, then what is not counted
        self.counts = torch.zeros(num_classes * (num_classes + 1) + 1, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, truth: torch.Tensor) -> None:
        """Count (truth, prediction) pairs as ``ConfusionMatrix.update`` does: truth equal to the ignore index or
        above the classes is left out, a prediction outside the classes is a miss of its true class."""
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and ground truth {tuple(truth.shape)} differ "
                             "in shape")
        k = self.num_classes
        truth, prediction = truth.to(torch.int64), prediction.to(torch.int64)
        counted = (truth != self.ignore_index) & (truth >= 0) & (truth < k)
        inside = (prediction >= 0) & (prediction < k)
        index = torch.where(inside, truth * k + prediction, k * k + truth)
        index = torch.where(counted, index, self.counts.numel() - 1)
        self.counts.scatter_add_(0, index.reshape(-1), torch.ones_like(index).reshape(-1))

    def to_host(self) -> ConfusionMatrix:
        """The counts as a ``ConfusionMatrix`` (the one host read)."""
        k = self.num_classes
        counts = self.counts.cpu().numpy()
        confusion = ConfusionMatrix(k, self.ignore_index)
        confusion.matrix += counts[:k * k].reshape(k, k)
        confusion.missed += counts[k * k:k * k + k]
        return confusion


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; through pinned memory and an asynchronous copy to a GPU, so the host does not
    wait for the GPU's queue to drain."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
