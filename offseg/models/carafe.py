"""CARAFE (content-aware reassembly of features) in plain PyTorch, with mmcv's exact semantics.

For features x (N, C, h, w) and reassembly kernels m (N, G*k*k, s*h, s*w)::

    y[n, c, p, q] = sum_{i, j < k} x[n, c, p//s + i - r, q//s + j - r] * m[n, g(c)*k*k + i*k + j, p, q]

with r = (k - 1) / 2, g(c) = c // (C / G) and zero padding outside the map (mmcv ``carafe``, naive and fast CUDA
kernels alike: no half-pixel shift, the output pixel reads the neighbourhood of its nearest low-resolution pixel).

Memory: the k*k taps are accumulated one at a time, so the k^2-times unfolded tensor at the output resolution is
never built; the extra memory is one nearest-upsampled, padded copy of x plus one product per tap.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def carafe(features: torch.Tensor, masks: torch.Tensor, kernel_size: int, group_size: int,
           scale_factor: int) -> torch.Tensor:
    """Reassemble ``features`` with per-pixel ``masks``; returns (N, C, s*h, s*w).

    Raises ValueError when the mask shape does not match ``features`` and the arguments.
    """
    n, c, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    if masks.shape != (n, g * k * k, s * h, s * w) or c % g:
        raise ValueError(f"carafe: masks {tuple(masks.shape)} do not fit features {tuple(features.shape)} "
                         f"with kernel {k}, groups {g}, scale {s}")
    radius = (k - 1) // 2
    if s > 1:
        features = F.interpolate(features, size=(s * h, s * w), mode="nearest")
    padded = F.pad(features, [radius * s] * 4).reshape(n, g, c // g, s * (h + 2 * radius), s * (w + 2 * radius))
    taps = masks.reshape(n, g, k * k, s * h, s * w)
    out = None
    for i in range(k):
        for j in range(k):
            window = padded[..., i * s:i * s + s * h, j * s:j * s + s * w]
            term = window * taps[:, :, i * k + j:i * k + j + 1]
            out = term if out is None else out + term
    return out.reshape(n, c, s * h, s * w)
