"""Inference helpers on top of ``model(x)`` (which returns stride-4 logits, exactly like the official head)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from runtime.preprocess import normalize_bgr, padded_size


def logits_to_labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, K, h, w) logits bilinearly (align_corners=False) to ``size`` (H, W), then argmax: (N, H, W)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(dim=1)


@torch.no_grad()
def predict(model: torch.nn.Module, image_bgr: np.ndarray) -> np.ndarray:
    """Label map (H, W) int64 for one uint8 BGR image of any size.

    The image is normalized (``runtime.preprocess``), zero-padded bottom/right to a multiple of 32 (as mmseg's data
    preprocessor pads), run whole, and the logits are resized to the padded size and cropped back. The model must
    be in eval mode.
    """
    h, w = image_bgr.shape[:2]
    x = torch.from_numpy(normalize_bgr(image_bgr))
    ph, pw = padded_size(h, w)
    x = F.pad(x, (0, pw - w, 0, ph - h))
    param = next(model.parameters())
    logits = model(x.to(param.device, param.dtype))
    return logits_to_labels(logits.float(), (ph, pw))[0, :h, :w].cpu().numpy()
