"""Offset learning: the OffSeg head's replacement for per-pixel classification (arXiv 2508.08811, Eq. 4-13).

Notation of the paper: E (hw x C) are the pixel features, W (K x C) the learned class representations.
The coupled logits A = E W^T are computed once and feed two branches:

* class offset   dW = P_c(softmax_over_pixels(A)^T E)  -- each class gathers the pixels that respond to it;
* feature offset dE = P_f(softmax_over_classes(A) W)   -- each pixel gathers the classes it responds to;

P_c and P_f are bias-free linear maps. The output is LayerNorm_over_classes((E + dE)(W + dW)^T), reshaped to
(N, K, h, w): the logits the official head returns (no 1/sqrt(C) scaling anywhere).

Fused form (``fused_forward``, what the ONNX export uses): the feature offset only reaches the masks through

    (E + dE)(W + dW)^T = E (W + dW)^T + softmax_over_classes(A) [(W P_f^T)(W + dW)^T]

where the bracket is a K x K matrix, so the hw x C feature-offset tensor is never built (exact algebra; at 512x512
it removes the hw x K x C and hw x C x C products: 3.60 -> 2.28 GMACs for the offset learning).
"""
from __future__ import annotations

import torch
from torch import nn


class OffsetLearning(nn.Module):
    """(N, C, h, w) features -> (N, K, h, w) class logits."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.num_classes = num_classes
        self.class_embed = nn.Parameter(torch.zeros(1, num_classes, channels))  # W
        self.class_offset_proj = nn.Linear(channels, channels, bias=False)  # P_c
        self.feature_offset_proj = nn.Linear(channels, channels, bias=False)  # P_f
        self.mask_norm = nn.LayerNorm(num_classes)
        nn.init.trunc_normal_(self.class_embed, std=0.02)
        nn.init.trunc_normal_(self.class_offset_proj.weight, std=0.02)
        nn.init.trunc_normal_(self.feature_offset_proj.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pixel_features = x.flatten(2).transpose(1, 2)  # E: (N, hw, C)
        class_embed = self.class_embed.expand(n, -1, -1)  # W: (N, K, C)

        coupled_logits = (pixel_features @ class_embed.transpose(1, 2)).transpose(1, 2)  # A^T: (N, K, hw)

        pixel_weights = coupled_logits.softmax(dim=2)  # softmax over pixels, per class
        class_offset = self.class_offset_proj(pixel_weights @ pixel_features)  # dW: (N, K, C)
        aligned_classes = class_embed + class_offset  # W + dW

        class_weights = coupled_logits.softmax(dim=1)  # softmax over classes, per pixel
        feature_offset = self.feature_offset_proj(class_weights.transpose(1, 2) @ class_embed)  # dE: (N, hw, C)
        aligned_features = pixel_features + feature_offset  # E + dE

        masks = self.mask_norm(aligned_features @ aligned_classes.transpose(1, 2))  # (N, hw, K)
        return masks.transpose(1, 2).reshape(n, self.num_classes, h, w)

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same output as ``forward`` without materializing dE (see the module docstring), computed class-major:
        every product is (K x .) @ (. x hw) on the features as they come (N, C, hw), so the output needs no
        transpose, and the LayerNorm over classes takes its means as MatMuls with a 1/K row (ONNX Runtime runs
        transposed-operand GEMMs at half speed and reductions over a non-last axis slowly)."""
        n, c, h, w = x.shape
        features = x.reshape(n, c, h * w)  # E^T: (N, C, hw)
        class_embed = self.class_embed.expand(n, -1, -1)  # W: (N, K, C)

        coupled_logits = class_embed @ features  # A^T: (N, K, hw), computed once
        pixel_weights = coupled_logits.softmax(dim=2)  # softmax over pixels, per class
        aligned_classes = class_embed + self.class_offset_proj(pixel_weights @ features.transpose(1, 2))  # W + dW

        class_weights = coupled_logits.softmax(dim=1)  # softmax over classes, per pixel: (N, K, hw)
        class_mixing = aligned_classes @ self.feature_offset_proj(class_embed).transpose(1, 2)  # (N, K, K)
        masks = aligned_classes @ features + class_mixing @ class_weights  # masks^T: (N, K, hw)
        return self._norm_over_classes(masks).reshape(n, self.num_classes, h, w)

    def _norm_over_classes(self, masks: torch.Tensor) -> torch.Tensor:
        """``mask_norm`` (LayerNorm over K) of class-major masks (N, K, hw)."""
        norm = self.mask_norm
        average = masks.new_full((1, masks.shape[1]), 1.0 / masks.shape[1])
        centred = masks - average @ masks
        variance = average @ (centred * centred)
        return centred * (variance + norm.eps).rsqrt() * norm.weight[:, None] + norm.bias[:, None]
