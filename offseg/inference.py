"""Inference helpers on top of ``model(x)`` (which returns stride-4 logits, exactly like the official head)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .protocol import Infer, TestProtocol, protocol_logits


def logits_to_labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, K, h, w) logits bilinearly (align_corners=False) to ``size`` (H, W), then argmax: (N, H, W)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(dim=1)


def torch_infer(model: torch.nn.Module) -> Infer:
    """The model as a protocol ``Infer``: (1, 3, h, w) normalized numpy input -> (1, K, h/4, w/4) numpy logits."""
    param = next(model.parameters())

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).to(param.device, param.dtype)).float().cpu().numpy()

    return infer


def predict(model: torch.nn.Module, image_bgr: np.ndarray, mode: str = "whole",
            crop: tuple[int, int] = (512, 512), stride: tuple[int, int] = (480, 480),
            scale: tuple[int, int] | None = None) -> np.ndarray:
    """Label map (H, W) int64 for one uint8 BGR image of any size (model in eval).

    ``mode`` whole or slide (windows of ``crop`` every ``stride``); ``scale`` resizes the image keep-ratio first,
    as a dataset's test pipeline does (e.g. (2048, 512) for ADE20K); the labels are at the original size.
    """
    logits = protocol_logits(image_bgr, torch_infer(model), TestProtocol(mode, crop, stride, scale))
    return logits.argmax(axis=2).astype(np.int64)
