"""CARAFE (content-aware reassembly of features) in plain PyTorch, with mmcv's exact semantics.

For features x (N, C, h, w) and reassembly kernels m (N, G*k*k, s*h, s*w)::

    y[n, c, p, q] = sum_{i, j < k} x[n, c, p//s + i - r, q//s + j - r] * m[n, g(c)*k*k + i*k + j, p, q]

with r = (k - 1) / 2, g(c) = c // (C / G) and zero padding outside the map (mmcv ``carafe``, naive and fast CUDA
kernels alike: no half-pixel shift, the output pixel reads the neighbourhood of its nearest low-resolution pixel).

Three exact forms. ``taps`` (the CPU and export form): the k*k taps are accumulated one at a time, in place, so the
k^2-times unfolded tensor at the output resolution is never built; the extra memory is one nearest-upsampled, padded
copy of x, but it launches one kernel per tap (an export: two, Mul and Add); in training its backward is its own
(``_TapsCarafe``), one in-place kernel per tap into one buffer. ``unfold`` (meant for CUDA): the k*k
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
from torch.autograd.function import once_differentiable

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
    # the k x k neighbourhoods as a view of the padded map, gathered by the matrix product's one copy (F.unfold's CUDA
    # im2col launches a kernel per image: 17 for a training batch of 16)
    padded = F.pad(features, [(k - 1) // 2] * 4).reshape(n, g, c // g, h + k - 1, w + k - 1)
    neighbourhoods = padded.unfold(3, k, 1).unfold(4, k, 1)  # (N, G, C/G, h, w, k, k)
    neighbourhoods = neighbourhoods.permute(0, 1, 3, 4, 2, 5, 6).reshape(n, g, h * w, c // g, k * k)
    kernels = masks.reshape(n, g, k * k, h, s, w, s).permute(0, 1, 3, 5, 2, 4, 6)  # (N, G, h, w, k*k, s, s)
    kernels = kernels.reshape(n, g, h * w, k * k, s * s)
    out = torch.matmul(neighbourhoods, kernels)  # (N, G, h*w, C/G, s*s)
    out = out.reshape(n, g, h, w, c // g, s, s).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(n, c, s * h, s * w)


def _carafe_taps(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int) -> torch.Tensor:
    if torch.is_grad_enabled() and (features.requires_grad or masks.requires_grad) and not plain():
        return _TapsCarafe.apply(features, masks, k, g, s)
    return _taps_sum(features, masks, k, g, s)


def _grouped_padded(features: torch.Tensor, k: int, g: int, s: int) -> torch.Tensor:
    """``features`` nearest-upsampled by s, zero-padded by r*s and split into groups: (N, G, C/G, s(h+2r), s(w+2r)),
    whose window (i, j) below is every output pixel's tap (i, j)."""
    n, c, h, w = features.shape
    radius = (k - 1) // 2
    if s > 1:
        features = F.interpolate(features, size=(s * h, s * w), mode="nearest")
    return F.pad(features, [radius * s] * 4).reshape(n, g, c // g, s * (h + 2 * radius), s * (w + 2 * radius))


def _window(padded: torch.Tensor, i: int, j: int, s: int, height: int, width: int) -> torch.Tensor:
    return padded[..., i * s:i * s + height, j * s:j * s + width]


def _taps_sum(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int) -> torch.Tensor:
    n, c, h, w = features.shape
    padded = _grouped_padded(features, k, g, s)
    taps = masks.reshape(n, g, k * k, s * h, s * w)
    as_exported = plain()
    out = None
    for i in range(k):
        for j in range(k):
            window = _window(padded, i, j, s, s * h, s * w)
            tap = taps[:, :, i * k + j:i * k + j + 1]
            if out is None:
                out = window * tap
            elif as_exported:  # ONNX has no multiply-add: Mul + Add, where addcmul would add a Mul by its scalar
                out = out + window * tap
            else:  # one kernel, no temporary: 6x faster than mul + add on the CPU (1.13 s -> 0.18 s, 256 channels)
                out = out.addcmul_(window, tap)
    return out.reshape(n, c, s * h, s * w)


class _TapsCarafe(torch.autograd.Function):
    """The taps form with a backward of its own: each tap's feature gradient is multiplied-added in place into one
    padded buffer (autograd through the loop filled a padded-size tensor with zeros for every tap, copied the tap's
    gradient into it and added it up: four passes over the whole map per tap), and the upsampled features are
    recomputed instead of kept (less memory in training)."""

    @staticmethod
    def forward(ctx, features, masks, k, g, s):
        ctx.save_for_backward(features, masks)
        ctx.settings = (k, g, s)
        return _taps_sum(features, masks, k, g, s)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        features, masks = ctx.saved_tensors
        k, g, s = ctx.settings
        n, c, h, w = features.shape
        height, width, radius = s * h, s * w, (k - 1) // 2
        grad = grad_out.reshape(n, g, c // g, height, width)
        grad_features = grad_masks = None
        if ctx.needs_input_grad[1]:  # per tap: the group's channels of its window times the output's gradient
            padded = _grouped_padded(features, k, g, s)
            grad_masks = torch.stack([(_window(padded, i, j, s, height, width) * grad).sum(dim=2)
                                      for i in range(k) for j in range(k)], dim=2)
            grad_masks = grad_masks.reshape(masks.shape).to(masks.dtype)
        if ctx.needs_input_grad[0]:  # per tap: the output's gradient times the tap, into the tap's window
            taps = masks.reshape(n, g, k * k, height, width)
            grad_padded = grad.new_zeros(n, g, c // g, s * (h + 2 * radius), s * (w + 2 * radius))
            for i in range(k):
                for j in range(k):
                    _window(grad_padded, i, j, s, height, width).addcmul_(grad, taps[:, :, i * k + j:i * k + j + 1])
            grad_upsampled = _window(grad_padded, radius, radius, s, height, width).reshape(n, c, height, width)
            if s > 1:  # the adjoint of nearest upsampling: each pixel gets the sum of its s x s copies
                grad_upsampled = grad_upsampled.reshape(n, c, h, s, w, s).sum(dim=(3, 5))
            grad_features = grad_upsampled.to(features.dtype)
        return grad_features, grad_masks, None, None, None
