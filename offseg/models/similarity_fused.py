"""FreqFusion's neighbour similarity as Triton kernels: part of the fused form (see
``freqfusion.neighbour_similarity`` for the definition, ``carafe_fused.py`` for the CARAFE kernels).

The readable form launches 21 kernels per call (norm, clamp, divide, pad, a product and a sum per neighbour, stack)
and writes 17 maps; here a call is one kernel. Each program takes a block of pixels and loops over the channels,
summing the squares of the pixel and of its 8 neighbours and the 8 products, so the similarity is
``x_p . x_q / (max(|x_p|, eps) max(|x_q|, eps))``, the cosine of the unit vectors as in the readable form.

Backward, one kernel: with u = x / m and m = max(|x|, eps), the gradient with respect to u_p is
``sum_j (g[p, j] + g[q_j, 7 - j]) u_{q_j}`` (the second term: p is neighbour 7 - j of its own neighbour q_j, the
window being symmetric), and the gradient with respect to x_p is that minus its projection on u_p, over m_p (no
projection where |x_p| < eps: the clamp passes no gradient). The projection needs no extra pass over the channels:
it is ``sum_j (g[p, j] + g[q_j, 7 - j]) s[p, j]``. Index arithmetic is integer; sums are FP32 (FP64 for FP64 input),
whatever the activations' dtype. ``eps`` reaches the kernels as an FP32 scalar (Triton's type for a Python float):
for FP64 maps, 1e-8 rounded to FP32, which moves the result only where a norm is below it (by 6e-9 relative).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .carafe_fused import accumulator

NEIGHBOURS = 8
# Block sizes and warps: ptxas (tests/test_carafe_fused.py) fits both kernels in 32-39 registers with Triton 3.9
# and 48-63 with 3.6 (torch 2.11's), sm_90 and sm_87, nothing spilled; 128 pixels x 4 channels took 139 and 205 with
# Triton 3.6 (57 and 64 with 3.9). Not yet timed on a GPU.
BLOCK_PIXELS = 64  # pixels per program (contiguous in memory: coalesced loads and stores)
BLOCK_CHANNELS = 2  # channels per loop step: each loads a (channels, 8 neighbours, pixels) tile
NUM_WARPS = 8


@triton.jit
def _neighbours(pixel, height, width, DILATION: tl.constexpr):
    """(index 0..7, flat offsets (8, BLOCK_P), in-map flags): the 3x3 window at distance DILATION without its
    centre, row-major, as in the readable form."""
    neighbour = tl.arange(0, 8)
    cell = neighbour + (neighbour >= 4).to(tl.int32)  # cells 0..8 of the window, 4 being the centre
    y = (pixel // width)[None, :] + ((cell // 3 - 1) * DILATION)[:, None]
    x = (pixel % width)[None, :] + ((cell % 3 - 1) * DILATION)[:, None]
    inside = (pixel < height * width)[None, :] & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    return neighbour, y * width + x, inside


@triton.jit
def _channel_tile(x, n, start, pixel, neighbour_offset, inside, channels, pixels, BLOCK_C: tl.constexpr,
                  ACC: tl.constexpr):
    """Channels start..start+BLOCK_C: (row offsets, channel flags, the pixels' values (BLOCK_C, BLOCK_P), their
    neighbours' (BLOCK_C, 8, BLOCK_P)), zero outside the map and past the channels."""
    channel = start + tl.arange(0, BLOCK_C)
    channel_ok = channel < channels
    rows = (n * channels + channel) * pixels
    centre = tl.load(x + rows[:, None] + pixel[None, :], mask=channel_ok[:, None] & (pixel < pixels)[None, :],
                     other=0.0).to(ACC)
    around = tl.load(x + rows[:, None, None] + neighbour_offset[None, :, :],
                     mask=channel_ok[:, None, None] & inside[None, :, :], other=0.0).to(ACC)
    return rows, channel_ok, centre, around


@triton.jit
def _norms_and_products(x, n, pixel, neighbour_offset, inside, channels, pixels, eps,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Over all channels: max(|x_p|, eps) (BLOCK_P,), max(|x_q|, eps) and x_p . x_q (8, BLOCK_P)."""
    centre_squares = tl.zeros((BLOCK_P,), dtype=ACC)
    neighbour_squares = tl.zeros((8, BLOCK_P), dtype=ACC)
    products = tl.zeros((8, BLOCK_P), dtype=ACC)
    for start in range(0, channels, BLOCK_C):
        _, _, centre, around = _channel_tile(x, n, start, pixel, neighbour_offset, inside, channels, pixels,
                                             BLOCK_C, ACC)
        centre_squares += tl.sum(centre * centre, axis=0)
        neighbour_squares += tl.sum(around * around, axis=0)
        products += tl.sum(centre[:, None, :] * around, axis=0)
    return (tl.maximum(tl.sqrt(centre_squares), eps), tl.maximum(tl.sqrt(neighbour_squares), eps), products)


@triton.jit
def _similarity_kernel(x, out, channels, height, width, eps, DILATION: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    pixels = height * width
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(1).to(tl.int64)
    neighbour, offset, inside = _neighbours(pixel, height, width, DILATION)
    centre_norm, neighbour_norm, products = _norms_and_products(x, n, pixel, offset, inside, channels, pixels, eps,
                                                                BLOCK_C, BLOCK_P, ACC)
    similarity = products / (centre_norm[None, :] * neighbour_norm)
    tl.store(out + (n * 8 + neighbour[:, None]) * pixels + pixel[None, :], similarity.to(out.dtype.element_ty),
             mask=(pixel < pixels)[None, :])


@triton.jit
def _similarity_grad_kernel(x, grad, grad_x, channels, height, width, eps, DILATION: tl.constexpr,
                            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    pixels = height * width
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(1).to(tl.int64)
    pixel_ok = pixel < pixels
    neighbour, offset, inside = _neighbours(pixel, height, width, DILATION)
    centre_norm, neighbour_norm, products = _norms_and_products(x, n, pixel, offset, inside, channels, pixels, eps,
                                                                BLOCK_C, BLOCK_P, ACC)
    similarity = products / (centre_norm[None, :] * neighbour_norm)
    own = tl.load(grad + (n * 8 + neighbour[:, None]) * pixels + pixel[None, :], mask=pixel_ok[None, :],
                  other=0.0).to(ACC)
    mirrored = tl.load(grad + (n * 8 + 7 - neighbour[:, None]) * pixels + offset, mask=inside, other=0.0).to(ACC)
    weight = own + mirrored  # (8, BLOCK_P): the gradient's coefficient of each neighbour's unit vector
    projection = tl.sum(weight * similarity, axis=0)
    projection = tl.where(centre_norm > eps, projection, 0.0)  # |x_p| clamped to eps: no gradient through it
    coefficient = weight / neighbour_norm
    for start in range(0, channels, BLOCK_C):
        rows, channel_ok, centre, around = _channel_tile(x, n, start, pixel, offset, inside, channels, pixels,
                                                         BLOCK_C, ACC)
        grad_unit = tl.sum(coefficient[None, :, :] * around, axis=1)
        result = (grad_unit - centre / centre_norm[None, :] * projection[None, :]) / centre_norm[None, :]
        tl.store(grad_x + rows[:, None] + pixel[None, :], result.to(grad_x.dtype.element_ty),
                 mask=channel_ok[:, None] & pixel_ok[None, :])


def launch_settings(kernel: str, dilation: int, accumulator_type) -> tuple:
    """(Triton function, its compile-time arguments) of ``kernel`` ("forward" or "grad"): one place for the launches
    and the compile test."""
    function = _similarity_kernel if kernel == "forward" else _similarity_grad_kernel
    return function, dict(DILATION=dilation, BLOCK_C=BLOCK_CHANNELS, BLOCK_P=BLOCK_PIXELS, ACC=accumulator_type)


def _launch(kernel: str, pointers: tuple, shape, dilation: int, eps: float, accumulator_type) -> None:
    """One program per BLOCK_P pixels of one image."""
    n, c, h, w = shape
    function, settings = launch_settings(kernel, dilation, accumulator_type)
    function[(triton.cdiv(h * w, BLOCK_PIXELS), n)](*pointers, c, h, w, eps, **settings, num_warps=NUM_WARPS)


# PyTorch operators (torch.library), opaque to the tracers like the fused CARAFE: shape-only fakes, so the model
# with the fused form runs on the meta device and torch.compile traces it as one graph.
@torch.library.custom_op("offseg::neighbour_similarity_fused", mutates_args=())
def _similarity_op(x: torch.Tensor, dilation: int, eps: float) -> torch.Tensor:
    n, _, h, w = x.shape
    x = x.contiguous()
    out = torch.empty((n, NEIGHBOURS, h, w), dtype=x.dtype, device=x.device)
    _launch("forward", (x, out), x.shape, dilation, eps, accumulator(x))
    return out


@_similarity_op.register_fake
def _(x, dilation, eps):
    n, _, h, w = x.shape
    return x.new_empty((n, NEIGHBOURS, h, w))


@torch.library.custom_op("offseg::neighbour_similarity_fused_grad", mutates_args=())
def _grad_op(x: torch.Tensor, grad: torch.Tensor, dilation: int, eps: float) -> torch.Tensor:
    """The gradient with respect to ``x``, in its dtype."""
    x = x.contiguous()
    grad_x = torch.empty_like(x)
    _launch("grad", (x, grad.contiguous(), grad_x), x.shape, dilation, eps, accumulator(x, grad))
    return grad_x


@_grad_op.register_fake
def _(x, grad, dilation, eps):
    return x.new_empty(x.shape)


def _save_inputs(ctx, inputs, output):
    x, dilation, eps = inputs
    ctx.save_for_backward(x)
    ctx.sizes = dilation, eps


def _backward(ctx, grad):
    x, = ctx.saved_tensors
    return _grad_op(x, grad, *ctx.sizes), None, None


_similarity_op.register_autograd(_backward, setup_context=_save_inputs)


def neighbour_similarity_fused(x: torch.Tensor, dilation: int, eps: float) -> torch.Tensor:
    """(N, 8, H, W) cosine similarities of every pixel of ``x`` (N, C, H, W) to its 8 neighbours at distance
    ``dilation``, in x's dtype: one launch, one more for the gradient."""
    return _similarity_op(x, dilation, eps)
