"""FreqFusion: frequency-aware fusion of a high-resolution and a 2x lower-resolution feature map.

As configured in OffSeg (official defaults): an adaptive low-pass filter (5x5 CARAFE kernels) upsamples the
low-resolution map, an adaptive high-pass filter (identity minus a 3x3 CARAFE low-pass) sharpens the
high-resolution map, and a local-similarity-guided sampler re-samples the upsampled map with learned offsets.
Kernels are predicted from channel-compressed copies of both inputs ("semi-conv" with compressed-feature
upsampling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .carafe import active_form, carafe

LOWPASS_KERNEL = 5
HIGHPASS_KERNEL = 3
ENCODER_KERNEL = 3
SAMPLER_GROUPS = 4
SIMILARITY_DILATION = 2


def normalize_kernels(logits: torch.Tensor, kernel_size: int, window: torch.Tensor) -> torch.Tensor:
    """Softmax over the k*k taps, times the window buffer, renormalized to sum 1: (N, k*k, H, W).

    A scalar window (the official ``hamming_window=False``) cancels in the renormalization, which would then only
    divide the softmax by its own sum (1 to rounding): skipped, three kernels fewer per call."""
    n, _, h, w = logits.shape
    weights = logits.reshape(n, -1, kernel_size * kernel_size, h, w).softmax(dim=2)
    if window.numel() > 1:
        weights = weights * window
        weights = weights / weights.sum(dim=2, keepdim=True)
    return weights.reshape(n, -1, h, w)


def neighbour_similarity(x: torch.Tensor, dilation: int = SIMILARITY_DILATION, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every pixel to its 8 neighbours at distance ``dilation``: (N, 8, H, W).

    Neighbours outside the map count as zero vectors (similarity 0, as the official zero-padded unfold), in
    row-major order of the 3x3 window without its centre. Vectors are normalized once, before padding, so the
    padded border never divides by a zero norm (the official 1e-8 eps underflows to 0 in FP16: 0/0 = NaN).
    Only the 4 neighbours before the centre are multiplied out, on the map grown by ``dilation``: the similarity
    to the neighbour at -o is the product for o taken at p - o (the same products, 8 kernels fewer per call).
    Under ``forced_form("fused")``: one Triton kernel (``similarity_fused.py``), the same to rounding.
    """
    if active_form() == "fused":
        from .similarity_fused import neighbour_similarity_fused  # triton: only where the fused form is asked for
        return neighbour_similarity_fused(x, dilation, eps)
    d, (h, w) = dilation, x.shape[-2:]
    unit = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)
    padded = F.pad(unit, [2 * d] * 4)
    grown = padded[:, :, d:d + h + 2 * d, d:d + w + 2 * d]  # zero outside the map
    before = ((-1, -1), (-1, 0), (-1, 1), (0, -1))  # neighbour offsets in units of d, row-major
    products = [(grown * padded[:, :, d + dy * d:d + dy * d + h + 2 * d, d + dx * d:d + dx * d + w + 2 * d]).sum(
        1, keepdim=True) for dy, dx in before]
    ahead = [products[i][..., d - dy * d:d - dy * d + h, d - dx * d:d - dx * d + w]
             for i, (dy, dx) in reversed(list(enumerate(before)))]
    return torch.cat([product[..., d:d + h, d:d + w] for product in products] + ahead, dim=1)


def bilinear_border_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` (bilinear, border padding, ``align_corners=False``) of ``x`` at the normalized ``grid``.

    FP16 and BF16 maps on the CPU are sampled in FP32 and rounded back: torch's CPU kernel offsets them with 16-bit
    integers (wrong pixels, NaN or a crash past 32,767 pixels a map: a 768x768 input's last sampler) and computes
    the weights in that precision."""
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return bilinear_border_sample(x.float(), grid.float()).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class LocalSimGuidedSampler(nn.Module):
    """Predicts 2x-upsampling sampling offsets from local similarities and resamples a map with grid_sample."""

    def __init__(self, channels: int, groups: int = SAMPLER_GROUPS, scale: int = 2):
        super().__init__()
        self.groups = groups
        self.scale = scale
        neighbours = 8
        out_channels = 2 * groups * scale * scale
        padding = ENCODER_KERNEL // 2
        self.offset = nn.Conv2d(neighbours, out_channels, ENCODER_KERNEL, padding=padding)
        self.direct_scale = nn.Conv2d(channels, out_channels, ENCODER_KERNEL, padding=padding)
        self.hr_offset = nn.Conv2d(neighbours, 2 * groups, ENCODER_KERNEL, padding=padding)
        self.hr_direct_scale = nn.Conv2d(channels, 2 * groups, ENCODER_KERNEL, padding=padding)
        self.norm_hr = nn.GroupNorm(channels // 8, channels)
        self.norm_lr = nn.GroupNorm(channels // 8, channels)
        # Sub-pixel start positions (+-0.25 grid). A persistent buffer, read from checkpoints like the official one.
        self.register_buffer("init_pos", self._sub_pixel_grid())

    def _sub_pixel_grid(self) -> torch.Tensor:
        steps = (torch.arange(self.scale) - (self.scale - 1) / 2) / self.scale
        grid = torch.stack(torch.meshgrid(steps, steps, indexing="ij")).transpose(1, 2)
        return grid.repeat(1, self.groups, 1).reshape(1, -1, 1, 1)

    def offsets(self, hr_x: torch.Tensor, lr_x: torch.Tensor) -> torch.Tensor:
        """Sampling offsets in low-resolution pixels: (N, 2 * groups * scale^2, h, w)."""
        hr_x, lr_x = self.norm_hr(hr_x), self.norm_lr(lr_x)
        direction = self.offset(neighbour_similarity(lr_x)) + F.pixel_unshuffle(
            self.hr_offset(neighbour_similarity(hr_x)), self.scale)
        gate = self.direct_scale(lr_x) + F.pixel_unshuffle(self.hr_direct_scale(hr_x), self.scale)
        return direction * gate.sigmoid() + self.init_pos

    def sample(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Bilinear (border-padded) sampling of ``x`` (N, C, s*h, s*w) at pixel centres moved by ``offsets``."""
        n, _, h, w = offsets.shape
        offsets = offsets.reshape(n, 2, -1, h, w)
        # one (2, h + 1, w + 1) grid of (x, y) pixel indices, built on the device (torch.tensor would copy from the
        # host: no CUDA-graph capture): its last row and column end at the size (w, h), a tensor rather than Python
        # scalars so the division stays a true division (CUDA turns "/ scalar" into "* (1 / scalar)")
        columns = torch.arange(w + 1, dtype=x.dtype, device=x.device)
        rows = torch.arange(h + 1, dtype=x.dtype, device=x.device)
        indices = torch.stack(torch.meshgrid(columns, rows, indexing="ij")).transpose(1, 2)
        centres = (indices[:, :h, :w] + 0.5)[None, :, None]
        size = indices[:, h:, w:][None, :, None]
        coords = 2 * (centres + offsets) / size - 1
        coords = F.pixel_shuffle(coords.reshape(n, -1, h, w), self.scale)
        grid = coords.reshape(n, 2, -1, self.scale * h, self.scale * w).permute(0, 2, 3, 4, 1).flatten(0, 1)
        sampled = bilinear_border_sample(x.reshape(n * self.groups, -1, x.shape[-2], x.shape[-1]), grid)
        return sampled.reshape(n, -1, self.scale * h, self.scale * w)

    def forward(self, hr_x: torch.Tensor, lr_x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.sample(feature, self.offsets(hr_x, lr_x))


class FreqFusion(nn.Module):
    """Fuses ``hr`` (N, C_hr, 2h, 2w) with ``lr`` (N, C_lr, h, w); returns (sharpened hr, upsampled lr)."""

    def __init__(self, hr_channels: int, lr_channels: int, compressed_channels: int):
        super().__init__()
        c = compressed_channels
        pad = ENCODER_KERNEL // 2
        self.hr_channel_compressor = nn.Conv2d(hr_channels, c, 1)
        self.lr_channel_compressor = nn.Conv2d(lr_channels, c, 1)
        self.content_encoder = nn.Conv2d(c, LOWPASS_KERNEL ** 2, ENCODER_KERNEL, padding=pad)  # low-pass kernels
        self.content_encoder2 = nn.Conv2d(c, HIGHPASS_KERNEL ** 2, ENCODER_KERNEL, padding=pad)  # high-pass kernels
        self.dysampler = LocalSimGuidedSampler(c)
        # Kernel windows (official ``hamming_window=False``: scalars that cancel in the normalization).
        self.register_buffer("hamming_lowpass", torch.ones(1))
        self.register_buffer("hamming_highpass", torch.ones(1))

    def forward(self, hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        compressed_hr = self.hr_channel_compressor(hr)
        compressed_lr = self.lr_channel_compressor(lr)

        # High-pass the compressed hr map first; the low-pass kernels are then predicted from it.
        highpass_logits_hr = self.content_encoder2(compressed_hr)
        kernels = normalize_kernels(highpass_logits_hr, HIGHPASS_KERNEL, self.hamming_highpass)
        compressed_hr = compressed_hr + compressed_hr - carafe(compressed_hr, kernels, HIGHPASS_KERNEL, 1, 1)

        lowpass_logits_hr = self.content_encoder(compressed_hr)
        kernels = normalize_kernels(lowpass_logits_hr, LOWPASS_KERNEL, self.hamming_lowpass)
        lowpass_logits = lowpass_logits_hr + carafe(self.content_encoder(compressed_lr), kernels, LOWPASS_KERNEL, 1, 2)

        lowpass_kernels = normalize_kernels(lowpass_logits, LOWPASS_KERNEL, self.hamming_lowpass)
        highpass_logits = highpass_logits_hr + carafe(
            self.content_encoder2(compressed_lr), lowpass_kernels, LOWPASS_KERNEL, 1, 2)

        upsampled_lr = carafe(lr, lowpass_kernels, LOWPASS_KERNEL, 1, 2)
        highpass_kernels = normalize_kernels(highpass_logits, HIGHPASS_KERNEL, self.hamming_highpass)
        hr = hr - carafe(hr, highpass_kernels, HIGHPASS_KERNEL, 1, 1) + hr
        return hr, self.dysampler(compressed_hr, compressed_lr, upsampled_lr)
