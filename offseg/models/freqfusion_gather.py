"""FreqFusion's export form for CPU runtimes: the same function as ``freqfusion.FreqFusion`` as a few large ops.

ONNX Runtime and OpenVINO run the readable form (a Slice, Mul and Add per CARAFE tap on nearest-upsampled maps, a
GridSample, channel reductions) as hundreds of memory-bound passes. Here, exactly the same arithmetic up to float
rounding:

- high-resolution maps are handled in *phase order*: pixel (2a+dy, 2b+dx) is row (a*w+b)*4 + dy*2+dx of a
  channels-last tensor (N, h*w, 4, C), so a scale-2 CARAFE at the low resolution yields all four output phases of
  a pixel from one (4, k*k) x (k*k, C) product and its result needs no pixel shuffle until it leaves FreqFusion;
- CARAFE is one Gather of the k x k neighbourhoods of a zero-padded channels-last map (constant index tables, or
  built in the graph from the shapes for dynamic exports) and one batched MatMul with the kernels;
- kernels are normalised by a softmax on the last axis; a scalar window buffer (the official
  ``hamming_window=False``) cancels in the renormalisation and is dropped; the high-pass residual ``2x - CARAFE(x)``
  is folded into the kernel (centre tap 2 - k, others -k); the two scale-2 CARAFEs sharing the low-pass kernels
  gather their inputs once;
- neighbour similarity takes 4 of the 8 dot products (the other 4 are the same products seen from the neighbour),
  channel sums are MatMuls with a ones row, and the sampler is a Gather of the 4 bilinear corners with tent weights
  instead of GridSample (border padding as a clamp of the sampling position).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .freqfusion import HIGHPASS_KERNEL, LOWPASS_KERNEL, SIMILARITY_DILATION, FreqFusion

PHASES = 4  # output pixels per low-resolution pixel at scale 2


def _arange(n, device: torch.device) -> torch.Tensor:
    """int32 0..n-1 (a constant in static exports, a Range on the shape in dynamic ones)."""
    return torch.arange(n, dtype=torch.int32, device=device)


def window_rows(h, w, k: int, device: torch.device) -> torch.Tensor:
    """(h, w, k*k) rows of a map zero-padded by (k-1)/2 and flattened row-major: the k x k window of each pixel."""
    width = w + k - 1
    pixels = _arange(h, device)[:, None] * width + _arange(w, device)[None, :]
    taps = _arange(k, device)[:, None] * width + _arange(k, device)[None, :]
    return pixels[:, :, None] + taps.reshape(1, 1, -1)


def gather_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows (N, P, C), index (...) into P -> (N, ..., C): one Gather (an embedding lookup) on the flattened rows."""
    n, count, c = rows.shape
    if isinstance(n, int) and n == 1:
        index = index[None]
    else:
        index = index[None] + (torch.arange(n, device=rows.device) * count).reshape(n, *[1] * index.dim())
    return F.embedding(index, rows.reshape(-1, c))


def padded_rows(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, C, H, W) -> zero-padded channels-last rows (N, (H+2p)*(W+2p), C)."""
    return F.pad(x, [pad] * 4).permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def to_phases(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 2h, 2w) -> phase order (N, h*w, 4, C)."""
    n, c, height, width = x.shape
    x = x.reshape(n, c, height // 2, 2, width // 2, 2).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, -1, PHASES, c)


def phases_to_channels_last(x: torch.Tensor, h, w) -> torch.Tensor:
    """Phase order (N, h*w, 4, C) -> (N, 2h, 2w, C)."""
    n, c = x.shape[0], x.shape[-1]
    return x.reshape(n, h, w, 2, 2, c).transpose(2, 3).reshape(n, 2 * h, 2 * w, c)


def carafe_up(x: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """Scale-2 CARAFE of x (N, C, h, w) with kernels (N, h*w, 4, k*k) in phase order; returns (N, h*w, 4, C)."""
    h, w = x.shape[-2:]
    return kernels @ gather_rows(padded_rows(x, k // 2), window_rows(h, w, k, x.device).reshape(h * w, k * k))


def carafe_same(x: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """Scale-1 CARAFE of x (N, C, 2h, 2w) with kernels (N, h*w, 4, k*k) in phase order; returns (N, C, 2h, 2w)."""
    n, c, height, width = x.shape
    kernels = phases_to_channels_last(kernels, height // 2, width // 2).reshape(n, height * width, 1, k * k)
    windows = window_rows(height, width, k, x.device).reshape(height * width, k * k)
    out = kernels @ gather_rows(padded_rows(x, k // 2), windows)
    return out.reshape(n, height, width, c).permute(0, 3, 1, 2)


class UnitVectors(nn.Module):
    """(N, C, H, W) -> channels-last unit vectors (N, H, W, C), norms clamped to ``eps``; the channel sum is a MatMul
    with a ones column (ONNX Runtime's ReduceSum over channels is slow). Its own module so that precision pins keep
    it in FP32 (the sum of squares overflows FP16; the official 1e-8 eps underflows)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.permute(0, 2, 3, 1)
        return pixels / (pixels * pixels @ x.new_ones(x.shape[1], 1)).sqrt().clamp_min(self.eps)


def neighbour_similarity(unit: torch.Tensor, dilation: int = SIMILARITY_DILATION) -> torch.Tensor:
    """``freqfusion.neighbour_similarity`` of channels-last unit vectors (N, H, W, C) from 4 dot products per pixel:
    (N, 8, H, W).

    With o one of the 4 "forward" offsets, the similarity to the neighbour at -o is the product at p - o, so the
    products are taken on the map grown by ``dilation`` and the 8 maps are read out of them with one Gather.
    """
    n, h, w, c = unit.shape
    d = dilation
    padded = F.pad(unit, [0, 0, 2 * d, 2 * d, 2 * d, 2 * d]).reshape(n, -1, c)
    width = w + 4 * d
    ys, xs = _arange(h + 2 * d, unit.device), _arange(w + 2 * d, unit.device)
    grown = ((ys[:, None] + d) * width + xs[None, :] + d).reshape(1, -1)  # the map grown by d, in padded rows
    forward = torch.tensor([d, width * d - d, width * d, width * d + d], dtype=torch.int32, device=unit.device)
    products = (gather_rows(padded, grown + forward[:, None]) * gather_rows(padded, grown)) @ unit.new_ones(c, 1)
    return gather_rows(products.reshape(n, -1, 1), _similarity_rows(h, w, d, unit.device)).reshape(n, 8, h, w)


def _similarity_rows(h, w, d: int, device: torch.device) -> torch.Tensor:
    """Where each of the 8 similarity maps (row-major 3x3 window without its centre) sits among the products
    (4 forward offsets x the grown map): neighbours before the centre are the products of -o at p - o."""
    grown_width = w + 2 * d
    pixels = (_arange(h, device)[:, None] + d) * grown_width + _arange(w, device)[None, :] + d
    size = (h + 2 * d) * grown_width
    # (forward offset index, shift of p) for the maps in official order
    reads = ((3, -(grown_width * d + d)), (2, -grown_width * d), (1, -(grown_width * d - d)), (0, -d),
             (0, 0), (1, 0), (2, 0), (3, 0))
    return torch.stack([pixels + (offset * size + shift) for offset, shift in reads])


def normalized_kernels(logits: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis (taps); a window that is not a scalar multiplies and renormalises."""
    weights = logits.softmax(dim=-1)
    if window.numel() == 1:
        return weights
    weights = weights * window.reshape(-1)
    return weights / weights.sum(dim=-1, keepdim=True)


def highpass_kernels(logits: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Kernels of ``2x - CARAFE(x)``: the identity's centre tap minus the low-pass kernel."""
    taps = logits.shape[-1]
    identity = torch.zeros(taps, dtype=logits.dtype, device=logits.device)
    identity[taps // 2] = 2.0
    return identity - normalized_kernels(logits, window)


def sampling_positions(offsets: torch.Tensor) -> torch.Tensor:
    """``grid_sample``'s sampling positions as pixel indices of the (2h, 2w) map, planar (N, 2, G, 4, h, w) like
    ``offsets``: (x, y) offsets in pixels of the (h, w) map around its pixel centres (b + 0.5, a + 0.5) for
    channel group G and output phase dy*2+dx of low-resolution pixel (a, b)."""
    h, w = offsets.shape[-2:]
    xs = 2 * torch.arange(w, dtype=offsets.dtype, device=offsets.device) + 0.5
    ys = 2 * torch.arange(h, dtype=offsets.dtype, device=offsets.device) + 0.5
    centres = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]))  # (2, h, w)
    return 2 * offsets + centres[:, None, None]


class SamplingCorners(nn.Module):
    """Where ``grid_sample`` (bilinear, border padding, ``align_corners=False``) reads, and with which weights.

    All arithmetic runs planar (the pixel axes innermost: ONNX Runtime broadcasts slowly over small inner axes) on
    at most 7-D tensors (TensorRT's limit is 8); one Transpose each puts rows and weights in output order. Its own
    module so that precision pins keep it whole in FP32 (row numbers and positions need 24 bits); run in PyTorch on
    FP16/BF16 offsets it computes in FP32 itself (the exported FP32 graph is unchanged, so ONNX FP16 still needs
    the pin).
    """

    def forward(self, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``offsets`` (N, 2, G, 4, h, w): (x, y) sampling offsets in pixels of the (h, w) map for output phase
        dy*2+dx of each low-resolution pixel and each of G channel groups, read from a (2h, 2w) map given in
        phase order (N, h*w, 4, C) (``carafe_up``'s output).

        Returns rows (N, 2h, 2w, G, 4) int32 into that map flattened to (N * h*w*4 * G, C/G), and the corner
        weights (N, 2h, 2w, G, 1, 4). Border padding is a clamp of the position; the corner past the last row or
        column, whose weight is then 0, reads the last one.
        """
        n, _, groups, _, h, w = offsets.shape
        if offsets.dtype in (torch.float16, torch.bfloat16):  # positions and row numbers need 24 bits
            offsets = offsets.float()
        dtype, device = offsets.dtype, offsets.device
        axis = (2, 1, 1, 1, 1)  # a constant per (x, y) axis
        last = torch.tensor([2 * w - 1, 2 * h - 1], dtype=dtype, device=device).reshape(axis)
        position = sampling_positions(offsets).clamp_min(0).minimum(last).unsqueeze(1)
        corners = position.floor() + torch.tensor([0.0, 1.0], dtype=dtype, device=device).reshape(2, 1, 1, 1, 1, 1)
        tent = 1 - (corners - position).abs()  # (N, 2 corners, 2 axes, G, 4, h, w): linear weights per axis
        corners = corners.minimum(last)
        # pixel (Y, X) sits at phase-order row (Y//2 * w + X//2) * 4 + Y%2 * 2 + X%2, a sum of one part per axis:
        # X + 2 * (X//2) for x and 2Y + 4(w - 1) * (Y//2) for y
        scale = torch.tensor([1.0, 2.0], dtype=dtype, device=device).reshape(axis)
        halves = torch.tensor([2, 4 * w - 4], dtype=dtype, device=device).reshape(axis)
        parts = corners * scale + (0.5 * corners).floor() * halves
        group = torch.arange(groups, dtype=dtype, device=device).reshape(groups, 1, 1, 1)
        rows = (parts[:, :, 1].unsqueeze(2) + parts[:, :, 0].unsqueeze(1)) * groups + group  # (N, y, x corner, ...)
        weights = tent[:, :, 1].unsqueeze(2) * tent[:, :, 0].unsqueeze(1)
        order = (0, 5, 3, 6, 4, 2, 1)  # (N, 4 corners, G, dy, dx, h, w) -> (N, h, dy, w, dx, G, 4 corners)
        # cast after the transpose: it then moves 4-byte floats, and the cast writes the rows once, in order
        rows = rows.reshape(n, 4, groups, 2, 2, h, w).permute(order).to(torch.int32)
        weights = weights.reshape(n, 4, groups, 2, 2, h, w).permute(order)
        if not (isinstance(n, int) and n == 1):
            image = torch.arange(n, dtype=torch.int32, device=device) * (h * w * 4 * groups)
            rows = rows + image.reshape(n, 1, 1, 1, 1, 1, 1)
        return rows.reshape(n, 2 * h, 2 * w, groups, 4), weights.reshape(n, 2 * h, 2 * w, groups, 1, 4)


def sample_bilinear(source: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``source`` (N, h*w, 4, C) in phase order read at ``SamplingCorners`` rows with its weights: (N, 2h, 2w, C)."""
    n, c = source.shape[0], source.shape[-1]
    groups = rows.shape[-2]
    values = F.embedding(rows, source.reshape(-1, c // groups))  # (N, 2h, 2w, G, 4, C/G)
    # weights from an FP32-pinned SamplingCorners meet FP16 values at the pin's border
    return (weights.to(values.dtype) @ values).reshape(n, rows.shape[1], rows.shape[2], c)


class GatherFreqFusion(nn.Module):
    """Runs a FreqFusion (sharing its weights) in the gather form; same inputs and outputs."""

    def __init__(self, fusion: FreqFusion):
        super().__init__()
        self.fusion = fusion
        self.unit_vectors = UnitVectors()
        self.sampling_corners = SamplingCorners()

    def forward(self, hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.fusion
        h, w = lr.shape[-2:]
        compressed_hr = f.hr_channel_compressor(hr)
        compressed_lr = f.lr_channel_compressor(lr)

        highpass_logits_hr = to_phases(f.content_encoder2(compressed_hr))
        kernels = highpass_kernels(highpass_logits_hr, f.hamming_highpass)
        compressed_hr = carafe_same(compressed_hr, kernels, HIGHPASS_KERNEL)

        lowpass_logits_hr = to_phases(f.content_encoder(compressed_hr))
        kernels = normalized_kernels(lowpass_logits_hr, f.hamming_lowpass)
        lowpass_logits = lowpass_logits_hr + carafe_up(f.content_encoder(compressed_lr), kernels, LOWPASS_KERNEL)
        lowpass_kernels = normalized_kernels(lowpass_logits, f.hamming_lowpass)

        # the high-pass logits and lr itself are upsampled by the same kernels: one gather
        shared = carafe_up(torch.cat([f.content_encoder2(compressed_lr), lr], dim=1), lowpass_kernels,
                           LOWPASS_KERNEL)
        taps = HIGHPASS_KERNEL ** 2
        highpass_logits = highpass_logits_hr + shared[..., :taps]
        hr = carafe_same(hr, highpass_kernels(highpass_logits, f.hamming_highpass), HIGHPASS_KERNEL)
        return hr, self._resample(compressed_hr, compressed_lr, shared[..., taps:], h, w)

    def _resample(self, hr_x: torch.Tensor, lr_x: torch.Tensor, upsampled: torch.Tensor, h, w) -> torch.Tensor:
        """The local-similarity-guided sampler on the phase-ordered upsampled map; returns (N, C, 2h, 2w)."""
        sampler = self.fusion.dysampler
        hr_x, lr_x = sampler.norm_hr(hr_x), sampler.norm_lr(lr_x)
        direction = sampler.offset(neighbour_similarity(self.unit_vectors(lr_x))) + F.pixel_unshuffle(
            sampler.hr_offset(neighbour_similarity(self.unit_vectors(hr_x))), sampler.scale)
        gate = sampler.direct_scale(lr_x) + F.pixel_unshuffle(sampler.hr_direct_scale(hr_x), sampler.scale)
        offsets = direction * gate.sigmoid() + sampler.init_pos  # (N, 2 * G * 4, h, w), low-resolution pixels
        offsets = offsets.reshape(lr_x.shape[0], 2, sampler.groups, 4, h, w)
        sampled = sample_bilinear(upsampled, *self.sampling_corners(offsets))
        return sampled.permute(0, 3, 1, 2)


def with_gather_fusions(model: nn.Module) -> nn.Module:
    """A copy of an OffSeg model whose FreqFusion stages run in the gather form (same weights, same outputs)."""
    model = copy.deepcopy(model)
    model.head.freqfusions = nn.ModuleList(GatherFreqFusion(f) for f in model.head.freqfusions)
    return model
