"""CARAFE (content-aware reassembly of features) in plain PyTorch, with mmcv's exact semantics.

For features x (N, C, h, w) and reassembly kernels m (N, G*k*k, s*h, s*w)::

    y[n, c, p, q] = sum_{i, j < k} x[n, c, p//s + i - r, q//s + j - r] * m[n, g(c)*k*k + i*k + j, p, q]

with r = (k - 1) / 2, g(c) = c // (C / G) and zero padding outside the map (mmcv ``carafe``, naive and fast CUDA
kernels alike: no half-pixel shift, the output pixel reads the neighbourhood of its nearest low-resolution pixel).

Two exact forms. ``taps`` (the CPU and export form): the k*k taps are accumulated one at a time, in place, so the
k^2-times unfolded tensor at the output resolution is never built; the extra memory is one nearest-upsampled, padded
copy of x, but it launches one kernel per tap (an export: two, Mul and Add). ``unfold`` (meant for CUDA): the k*k
neighbourhoods of x are unfolded at the LOW resolution (k^2 x the input, not k^2 s^2 x) and each output phase is
one batched matrix product with its kernels: a handful of kernels per call instead of k^2, which is what makes the
eager GPU forward launch-bound otherwise. ``fused`` (``carafe_fused.py``, CUDA): one Triton kernel per call, two
for its backward, nothing intermediate in memory; needs ``triton``; it also fuses FreqFusion's neighbour similarity
(``similarity_fused.py``). The GPU forms are opt-in until benchmarks/gpu.py has measured them on a GPU.
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from runtime.errors import OffsegError

from ..names import CARAFE_FORMS
from .plain import plain

_forced_form: str | None = None


@contextmanager
def forced_form(form: str):
    """Run every ``carafe`` call inside in ``form`` ("taps", "unfold" or "fused"), e.g. to compare them on a GPU;
    "fused" also runs FreqFusion's neighbour similarity as one kernel (``similarity_fused.py``)."""
    global _forced_form
    previous, _forced_form = _forced_form, form
    try:
        yield
    finally:
        _forced_form = previous


def active_form() -> str:
    """The form ``carafe`` calls run in here: the innermost ``forced_form``, else "taps"."""
    return _forced_form or "taps"


def check_carafe_form(form: str, device: torch.device) -> None:
    """Raises OffsegError when ``form`` cannot run on ``device`` here (the fused form needs Triton and a GPU, or
    Triton's interpreter: ``TRITON_INTERPRET=1``)."""
    if form != "fused":
        return
    if importlib.util.find_spec("triton") is None:
        raise OffsegError("--carafe fused needs Triton (pip install triton, the version your torch names)")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise OffsegError(f"--carafe fused runs a Triton kernel on a CUDA GPU; this run is on {device.type} "
                          "(TRITON_INTERPRET=1 runs it, slowly, on the CPU)")


def carafe(features: torch.Tensor, masks: torch.Tensor, kernel_size: int, group_size: int,
           scale_factor: int, form: str | None = None) -> torch.Tensor:
    """Reassemble ``features`` with per-pixel ``masks``; returns (N, C, s*h, s*w).

    ``form``: "taps" (default), "unfold" or "fused" (opt-in until measured on a GPU; see ``forced_form``); all
    three have a backward. Raises ValueError when the mask shape does not match ``features`` and the arguments.
    """
    n, c, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    if masks.shape != (n, g * k * k, s * h, s * w) or c % g:
        raise ValueError(f"carafe: masks {tuple(masks.shape)} do not fit features {tuple(features.shape)} "
                         f"with kernel {k}, groups {g}, scale {s}")
    form = form or active_form()
    if form not in CARAFE_FORMS:
        raise ValueError(f"carafe: unknown form {form!r}; choose from {', '.join(CARAFE_FORMS)}")
    if form == "unfold":
        return _carafe_unfold(features, masks, k, g, s)
    if form == "fused":
        from .carafe_fused import carafe_fused  # triton: only where this form is asked for
        return carafe_fused(features, masks, k, g, s)
    return _carafe_taps(features, masks, k, g, s)


def _carafe_unfold(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int) -> torch.Tensor:
    """Output pixel (p*s + a, q*s + b) = neighbourhood of (p, q) (C/G x k*k) @ its kernel (k*k): one batched
    product over all (n, group, p, q), with the s*s phases as the product's columns."""
    n, c, h, w = features.shape
    neighbourhoods = F.unfold(features, k, padding=(k - 1) // 2)  # (N, C*k*k, h*w), channel-major
    neighbourhoods = neighbourhoods.reshape(n, g, c // g, k * k, h * w).permute(0, 1, 4, 2, 3)
    kernels = masks.reshape(n, g, k * k, h, s, w, s).permute(0, 1, 3, 5, 2, 4, 6)  # (N, G, h, w, k*k, s, s)
    kernels = kernels.reshape(n, g, h * w, k * k, s * s)
    out = torch.matmul(neighbourhoods, kernels)  # (N, G, h*w, C/G, s*s)
    out = out.reshape(n, g, h, w, c // g, s, s).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(n, c, s * h, s * w)


def _carafe_taps(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int) -> torch.Tensor:
    n, c, h, w = features.shape
    radius = (k - 1) // 2
    if s > 1:
        features = F.interpolate(features, size=(s * h, s * w), mode="nearest")
    padded = F.pad(features, [radius * s] * 4).reshape(n, g, c // g, s * (h + 2 * radius), s * (w + 2 * radius))
    taps = masks.reshape(n, g, k * k, s * h, s * w)
    as_exported = plain()
    out = None
    for i in range(k):
        for j in range(k):
            window = padded[..., i * s:i * s + s * h, j * s:j * s + s * w]
            tap = taps[:, :, i * k + j:i * k + j + 1]
            if out is None:
                out = window * tap
            elif as_exported:  # ONNX has no multiply-add: Mul + Add, where addcmul would add a Mul by its scalar
                out = out + window * tap
            else:  # one kernel, no temporary: 6x faster than mul + add on the CPU (1.13 s -> 0.18 s, 256 channels)
                out = out.addcmul_(window, tap)
    return out.reshape(n, c, s * h, s * w)
