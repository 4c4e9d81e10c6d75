"""CARAFE as Triton kernels: the CUDA form for inference and training (see ``carafe.py`` for the semantics and the
other forms).

Forward: each program computes a block of output pixels for a block of channels: for every tap it reads the source
pixel of the nearest low-resolution position (zero outside the map) and that tap's kernel value. So a call is one
kernel launch and one pass over the features, the kernels and the output, whatever k and s are, where the taps
form launches k^2 kernels, each a pass over the output. Backward: two more kernels, one per input (mmcv's
CUDA CARAFE has the same two): the kernels' gradient sums, per output pixel and tap, the output gradient times the
tap's source pixel over the group's channels; the features' gradient gathers, per low-resolution pixel, the output
gradient times the kernel value of every (tap, output pixel) that read it, so no atomics and a deterministic
result. Index arithmetic is integer; sums are FP32 whatever the activations' dtype (FP16/BF16 safe), FP64 for FP64
tensors (what ``torch.autograd.gradcheck`` needs).

Triton runs them on CUDA; with ``TRITON_INTERPRET=1`` set before the first import, its interpreter runs the same
kernels on CPU tensors, which is how the tests check them against the taps form without a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Block sizes and warps: chosen (2026-12-06, no GPU at hand) so that ptxas fits every kernel in at most 128
# registers per thread without spilling, for sm_90 and sm_87, with Triton 3.9 and with 3.6 (torch 2.11's);
# tests/test_carafe_fused.py compiles them on the CPU. The static 25-tap loops of the first version took 255
# registers and spilled; 4 channels per step in the kernels' gradient took 195 with Triton 3.6.
BLOCK_PIXELS = 128  # output pixels per program (contiguous in memory: coalesced kernel loads and output stores)
MAX_BLOCK_CHANNELS = 16  # channels per program: the kernel values of a group are loaded once for all of them
GRAD_BLOCK_PIXELS = 64  # the kernels' gradient: output pixels per program (x every tap x a block of channels)
GRAD_BLOCK_CHANNELS = 2  # the kernels' gradient: channels summed per loop step
NUM_WARPS = 8


@triton.jit
def _kernel_rows(n, channel, groups, channels_per_group, out_pixels, K: tl.constexpr, SINGLE_GROUP: tl.constexpr):
    """Offset of the reassembly kernels of (n, each channel's group): a scalar for one group, else (BLOCK_C, 1)."""
    if SINGLE_GROUP:
        rows = n * (K * K) * out_pixels
    else:
        rows = (n * groups + channel[:, None] // channels_per_group) * (K * K) * out_pixels
    return rows


@triton.jit
def _kernel_values(masks, rows, tap, out_pixels, pixel, pixel_ok, channel_ok, SINGLE_GROUP: tl.constexpr,
                   ACC: tl.constexpr):
    """Tap ``tap``'s kernel values at ``pixel`` (zero where not ``pixel_ok``), shaped to broadcast over channels."""
    if SINGLE_GROUP:
        values = tl.load(masks + rows + tap * out_pixels + pixel, mask=pixel_ok, other=0.0).to(ACC)[None, :]
    else:
        values = tl.load(masks + rows + tap * out_pixels + pixel[None, :],
                         mask=channel_ok[:, None] & pixel_ok[None, :], other=0.0).to(ACC)
    return values


@triton.jit
def _carafe_kernel(features, masks, out, channels, height, width, groups, channels_per_group,
                   K: tl.constexpr, S: tl.constexpr, SINGLE_GROUP: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    out_height, out_width = height * S, width * S
    out_pixels = out_height * out_width
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    channel_blocks = (channels + BLOCK_C - 1) // BLOCK_C
    n = (tl.program_id(1) // channel_blocks).to(tl.int64)
    channel = (tl.program_id(1) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    pixel_ok, channel_ok = pixel < out_pixels, channel < channels
    source_y, source_x = (pixel // out_width) // S, (pixel % out_width) // S  # nearest low-resolution pixel
    feature_rows = (n * channels + channel[:, None]) * (height * width)
    mask_rows = _kernel_rows(n, channel, groups, channels_per_group, out_pixels, K, SINGLE_GROUP)
    total = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for tap in range(K * K):
        y = source_y + tap // K - (K - 1) // 2
        x = source_x + tap % K - (K - 1) // 2
        inside = pixel_ok & (y >= 0) & (y < height) & (x >= 0) & (x < width)
        value = tl.load(features + feature_rows + (y * width + x)[None, :],
                        mask=channel_ok[:, None] & inside[None, :], other=0.0).to(ACC)
        total += value * _kernel_values(masks, mask_rows, tap, out_pixels, pixel, pixel_ok, channel_ok,
                                        SINGLE_GROUP, ACC)
    out_rows = (n * channels + channel[:, None]) * out_pixels
    tl.store(out + out_rows + pixel[None, :], total.to(out.dtype.element_ty),
             mask=channel_ok[:, None] & pixel_ok[None, :])


@triton.jit
def _carafe_masks_grad_kernel(features, grad_out, grad_masks, channels, height, width, groups, channels_per_group,
                              K: tl.constexpr, S: tl.constexpr, TAPS: tl.constexpr,
                              BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """grad_masks[n, g*K*K + tap, p] = sum over the group's channels c of grad_out[n, c, p] * x[n, c, source(p, tap)];
    one program: a block of output pixels of one (n, group), every tap at once (TAPS = K*K rounded up to 2^m)."""
    out_width = width * S
    out_pixels = height * S * out_width
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = (tl.program_id(1) // groups).to(tl.int64)
    group = tl.program_id(1) % groups
    tap = tl.arange(0, TAPS)
    pixel_ok, tap_ok = pixel < out_pixels, tap < K * K
    y = ((pixel // out_width) // S)[None, :] + (tap // K - (K - 1) // 2)[:, None]  # (TAPS, BLOCK_P)
    x = ((pixel % out_width) // S)[None, :] + (tap % K - (K - 1) // 2)[:, None]
    inside = tap_ok[:, None] & pixel_ok[None, :] & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    source = y * width + x
    total = tl.zeros((TAPS, BLOCK_P), dtype=ACC)
    for start in range(0, channels_per_group, BLOCK_C):
        in_group = start + tl.arange(0, BLOCK_C)
        channel_ok = in_group < channels_per_group
        rows = n * channels + group * channels_per_group + in_group  # (BLOCK_C,)
        grad = tl.load(grad_out + rows[:, None] * out_pixels + pixel[None, :],
                       mask=channel_ok[:, None] & pixel_ok[None, :], other=0.0).to(ACC)
        value = tl.load(features + (rows * (height * width))[:, None, None] + source[None, :, :],
                        mask=channel_ok[:, None, None] & inside[None, :, :], other=0.0).to(ACC)
        total += tl.sum(value * grad[:, None, :], axis=0)
    mask_rows = (n * groups + group) * (K * K) * out_pixels
    tl.store(grad_masks + mask_rows + tap[:, None] * out_pixels + pixel[None, :],
             total.to(grad_masks.dtype.element_ty), mask=tap_ok[:, None] & pixel_ok[None, :])


@triton.jit
def _carafe_features_grad_kernel(masks, grad_out, grad_features, channels, height, width, groups,
                                 channels_per_group, K: tl.constexpr, S: tl.constexpr, SINGLE_GROUP: tl.constexpr,
                                 BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """grad_x[n, c, y, x] = sum over the taps and the S*S output pixels of the low-resolution pixel whose tap reads
    (y, x) of grad_out times that tap's kernel value; one program: a block of low-resolution pixels and channels."""
    out_width = width * S
    out_pixels = height * S * out_width
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    channel_blocks = (channels + BLOCK_C - 1) // BLOCK_C
    n = (tl.program_id(1) // channel_blocks).to(tl.int64)
    channel = (tl.program_id(1) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    pixel_ok, channel_ok = pixel < height * width, channel < channels
    grad_rows = (n * channels + channel[:, None]) * out_pixels
    mask_rows = _kernel_rows(n, channel, groups, channels_per_group, out_pixels, K, SINGLE_GROUP)
    total = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for tap in range(K * K):
        reader_y = pixel // width - tap // K + (K - 1) // 2  # the low-resolution pixel whose tap reads this one
        reader_x = pixel % width - tap % K + (K - 1) // 2
        inside = pixel_ok & (reader_y >= 0) & (reader_y < height) & (reader_x >= 0) & (reader_x < width)
        for phase in range(S * S):
            out_pixel = (reader_y * S + phase // S) * out_width + reader_x * S + phase % S
            grad = tl.load(grad_out + grad_rows + out_pixel[None, :], mask=channel_ok[:, None] & inside[None, :],
                           other=0.0).to(ACC)
            total += grad * _kernel_values(masks, mask_rows, tap, out_pixels, out_pixel, inside, channel_ok,
                                           SINGLE_GROUP, ACC)
    feature_rows = (n * channels + channel[:, None]) * (height * width)
    tl.store(grad_features + feature_rows + pixel[None, :], total.to(grad_features.dtype.element_ty),
             mask=channel_ok[:, None] & pixel_ok[None, :])


def accumulator(*tensors: torch.Tensor):
    """Triton's type for the kernels' sums: FP64 for FP64 tensors (gradcheck), else FP32."""
    return tl.float64 if any(t.dtype == torch.float64 for t in tensors) else tl.float32


def launch_settings(kernel: str, channels: int, k: int, g: int, s: int, accumulator) -> tuple:
    """(Triton function, its compile-time arguments) of ``kernel`` ("forward", "features_grad" or "masks_grad")
    for ``channels`` (C) and CARAFE's k, g, s: one place for the launches and the compile test."""
    if kernel == "masks_grad":
        return _carafe_masks_grad_kernel, dict(K=k, S=s, TAPS=triton.next_power_of_2(k * k),
                                               BLOCK_C=GRAD_BLOCK_CHANNELS, BLOCK_P=GRAD_BLOCK_PIXELS, ACC=accumulator)
    function = _carafe_kernel if kernel == "forward" else _carafe_features_grad_kernel
    return function, dict(K=k, S=s, SINGLE_GROUP=g == 1, BLOCK_C=min(MAX_BLOCK_CHANNELS, triton.next_power_of_2(
        channels)), BLOCK_P=BLOCK_PIXELS, ACC=accumulator)


def _launch(kernel: str, pointers: tuple, features_shape, k: int, g: int, s: int, accumulator) -> None:
    """One program per BLOCK_P pixels (low-resolution ones for the features' gradient) and per channel block, or
    per group for the kernels' gradient."""
    n, c, h, w = features_shape
    function, settings = launch_settings(kernel, c, k, g, s, accumulator)
    pixels = h * w if kernel == "features_grad" else s * h * s * w
    per_image = g if kernel == "masks_grad" else triton.cdiv(c, settings["BLOCK_C"])
    grid = (triton.cdiv(pixels, settings["BLOCK_P"]), n * per_image)
    function[grid](*pointers, c, h, w, g, c // g, **settings, num_warps=NUM_WARPS)


def _output_dtype(features: torch.Tensor, masks: torch.Tensor) -> torch.dtype:
    return torch.result_type(features, masks)


# The kernels are wrapped as PyTorch operators (torch.library), opaque to the tracers: each has a fake (shape and
# dtype only) implementation, so the model with this form runs on the ``meta`` device, torch.compile traces it as
# one graph (fullgraph) and AOT autograd plans its backward, without looking into Triton.
@torch.library.custom_op("offseg::carafe_fused", mutates_args=())
def _carafe_op(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int) -> torch.Tensor:
    n, c, h, w = features.shape
    features, masks = features.contiguous(), masks.contiguous()
    out = torch.empty((n, c, s * h, s * w), dtype=_output_dtype(features, masks), device=features.device)
    _launch("forward", (features, masks, out), features.shape, k, g, s, accumulator(features, masks))
    return out


@_carafe_op.register_fake
def _(features, masks, k, g, s):
    n, c, h, w = features.shape
    return features.new_empty((n, c, s * h, s * w), dtype=_output_dtype(features, masks))


@torch.library.custom_op("offseg::carafe_fused_grad", mutates_args=())
def _grad_op(features: torch.Tensor, masks: torch.Tensor, grad_out: torch.Tensor, k: int, g: int, s: int,
             wrt: int) -> torch.Tensor:
    """The gradient with respect to input ``wrt`` (0: the features, 1: the kernels), in that input's dtype."""
    like, source = (features, masks) if wrt == 0 else (masks, features)
    grad = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    _launch(("features_grad", "masks_grad")[wrt], (source.contiguous(), grad_out.contiguous(), grad), features.shape,
            k, g, s, accumulator(features, masks, grad_out))
    return grad


@_grad_op.register_fake
def _(features, masks, grad_out, k, g, s, wrt):
    like = (features, masks)[wrt]
    return like.new_empty(like.shape)


def _save_inputs(ctx, inputs, output):
    features, masks, k, g, s = inputs
    ctx.save_for_backward(features, masks)
    ctx.sizes = k, g, s


def _backward(ctx, grad_out):
    features, masks = ctx.saved_tensors
    grads = [_grad_op(features, masks, grad_out, *ctx.sizes, wrt) if ctx.needs_input_grad[wrt] else None
             for wrt in (0, 1)]
    return *grads, None, None, None


_carafe_op.register_autograd(_backward, setup_context=_save_inputs)


def carafe_fused(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int) -> torch.Tensor:
    """CARAFE in one launch (two more for the backward); shapes as checked by ``carafe.carafe``. The output dtype
    is what ``features * masks`` gives (as in the taps form); each gradient has its input's dtype."""
    return _carafe_op(features, masks, k, g, s)
