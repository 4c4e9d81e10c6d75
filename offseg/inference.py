"""Inference helpers on top of ``model(x)`` (which returns stride-4 logits, exactly like the official head).

``whole_logits`` and ``slide_logits`` follow mmseg's ``whole`` and ``slide`` test modes: logits are resized
bilinearly (align_corners=False) to the image (or window) size before windows are averaged and before argmax.
Inputs are zero-padded bottom/right to a multiple of 32 and the logits cropped back.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from runtime.preprocess import normalize_bgr, padded_size, sliding_windows


def logits_to_labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, K, h, w) logits bilinearly (align_corners=False) to ``size`` (H, W), then argmax: (N, H, W)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(dim=1)


def whole_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) normalized images of any size -> (N, K, H, W) float32 logits."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w)
    param = next(model.parameters())
    logits = model(F.pad(x, (0, pw - w, 0, ph - h)).to(param.device, param.dtype)).float()
    return F.interpolate(logits, size=(ph, pw), mode="bilinear", align_corners=False)[:, :, :h, :w]


def slide_logits(model: torch.nn.Module, x: torch.Tensor, crop: tuple[int, int],
                 stride: tuple[int, int]) -> torch.Tensor:
    """Sliding-window logits (mmseg ``slide``): windows of ``crop`` every ``stride``, overlaps averaged."""
    n, _, h, w = x.shape
    total, count = None, torch.zeros(1, 1, h, w, device=x.device)
    for y1, y2, x1, x2 in sliding_windows(h, w, crop, stride):
        logits = whole_logits(model, x[:, :, y1:y2, x1:x2])
        if total is None:
            total = torch.zeros(n, logits.shape[1], h, w, device=logits.device)
        total[:, :, y1:y2, x1:x2] += logits
        count[:, :, y1:y2, x1:x2] += 1
    return total / count.to(total.device)


@torch.no_grad()
def predict(model: torch.nn.Module, image_bgr: np.ndarray, mode: str = "whole",
            crop: tuple[int, int] = (512, 512), stride: tuple[int, int] = (480, 480)) -> np.ndarray:
    """Label map (H, W) int64 for one uint8 BGR image of any size (``mode`` whole or slide; model in eval)."""
    x = torch.from_numpy(normalize_bgr(image_bgr))
    logits = whole_logits(model, x) if mode == "whole" else slide_logits(model, x, crop, stride)
    return logits.argmax(dim=1)[0].cpu().numpy()
