"""CARAFE as one Triton kernel: the CUDA inference form (see ``carafe.py`` for the semantics and the other forms).

Each program computes a block of output pixels for a block of channels: for every tap it reads the source pixel of
the nearest low-resolution position (zero outside the map) and that tap's kernel value, and accumulates in FP32.
So a call is one kernel launch and one pass over the features, the kernels and the output, whatever k and s are,
where the taps form launches 3 k^2 kernels and writes k^2 intermediate maps. Index arithmetic is integer and the
accumulation FP32 whatever the activations' dtype (FP16/BF16 safe). No backward: inference only.

Triton runs it on CUDA; with ``TRITON_INTERPRET=1`` set before the first import, its interpreter runs the same
kernel on CPU tensors, which is how the tests check it against the taps form without a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_PIXELS = 128  # output pixels per program (contiguous in memory: coalesced kernel loads and output stores)
MAX_BLOCK_CHANNELS = 16  # channels per program: the kernel values of a group are loaded once for all of them


@triton.jit
def _carafe_kernel(features, masks, out, channels, height, width, groups, channels_per_group,
                   K: tl.constexpr, S: tl.constexpr, SINGLE_GROUP: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    out_height, out_width = height * S, width * S
    out_pixels = out_height * out_width
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    channel_blocks = (channels + BLOCK_C - 1) // BLOCK_C
    n = (tl.program_id(1) // channel_blocks).to(tl.int64)
    channel = (tl.program_id(1) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    pixel_ok, channel_ok = pixel < out_pixels, channel < channels
    source_y, source_x = (pixel // out_width) // S, (pixel % out_width) // S  # nearest low-resolution pixel
    feature_rows = (n * channels + channel[:, None]) * (height * width)
    if SINGLE_GROUP:
        mask_rows = n * (K * K) * out_pixels
    else:
        mask_rows = (n * groups + channel[:, None] // channels_per_group) * (K * K) * out_pixels
    total = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for tap in tl.static_range(K * K):
        y = source_y + tap // K - (K - 1) // 2
        x = source_x + tap % K - (K - 1) // 2
        inside = pixel_ok & (y >= 0) & (y < height) & (x >= 0) & (x < width)
        value = tl.load(features + feature_rows + (y * width + x)[None, :],
                        mask=channel_ok[:, None] & inside[None, :], other=0.0).to(tl.float32)
        if SINGLE_GROUP:
            weight = tl.load(masks + mask_rows + tap * out_pixels + pixel, mask=pixel_ok, other=0.0)
            weight = weight.to(tl.float32)[None, :]
        else:
            weight = tl.load(masks + mask_rows + tap * out_pixels + pixel[None, :],
                             mask=channel_ok[:, None] & pixel_ok[None, :], other=0.0).to(tl.float32)
        total += value * weight
    out_rows = (n * channels + channel[:, None]) * out_pixels
    tl.store(out + out_rows + pixel[None, :], total.to(out.dtype.element_ty),
             mask=channel_ok[:, None] & pixel_ok[None, :])


def carafe_fused(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int) -> torch.Tensor:
    """CARAFE in one launch; shapes as checked by ``carafe.carafe``. The output dtype is what ``features * masks``
    gives (as in the taps form)."""
    n, c, h, w = features.shape
    features, masks = features.contiguous(), masks.contiguous()
    out = torch.empty((n, c, s * h, s * w), dtype=torch.result_type(features, masks), device=features.device)
    block_c = min(MAX_BLOCK_CHANNELS, triton.next_power_of_2(c))
    grid = (triton.cdiv(s * h * s * w, BLOCK_PIXELS), n * triton.cdiv(c, block_c))
    _carafe_kernel[grid](features, masks, out, c, h, w, g, c // g, K=k, S=s, SINGLE_GROUP=g == 1,
                         BLOCK_C=block_c, BLOCK_P=BLOCK_PIXELS)
    return out
