"""EfficientFormerV2 segmentation backbone (S1 / S2 / L), as OffSeg uses it.

Four feature maps at strides 4, 8, 16, 32. The last blocks of stages 2 and 3 are attention blocks whose learned
position biases were tabulated for a 512x512 input; like the official implementation they are resampled (bicubic,
over the flattened query/key token grid) to whatever token counts the input gives, so any H, W divisible by 32
works.

BatchNorm: the official backbone forces ``nn.BatchNorm2d`` into eval mode during training, but the released configs
first convert every BN to ``SyncBatchNorm``, which that override does not match, so in the official recipe the
backbone BN statistics *do* train. We reproduce the recipe: plain BatchNorm that trains in ``train()`` mode (and
becomes SyncBatchNorm under ``torchrun``, see ``offseg.train``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .plain import plain

TABLE_RESOLUTION = 512  # input size the attention-bias tables were built for (official ``resolution=512``)


@dataclass(frozen=True)
class BackboneConfig:
    """Widths, depths and MLP expansion ratios of one EfficientFormerV2 variant."""

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    expansion_ratios: tuple[tuple[int, ...], ...]
    attention_blocks: int  # how many trailing blocks of stages 2 and 3 are attention blocks
    drop_path_rate: float


VARIANTS = {
    "s1": BackboneConfig(
        widths=(32, 48, 120, 224), depths=(3, 3, 9, 6),
        expansion_ratios=((4,) * 3, (4,) * 3, (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)),
        attention_blocks=2, drop_path_rate=0.0),
    "s2": BackboneConfig(
        widths=(32, 64, 144, 288), depths=(4, 4, 12, 8),
        expansion_ratios=((4,) * 4, (4,) * 4, (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4)),
        attention_blocks=4, drop_path_rate=0.02),
    "l": BackboneConfig(
        widths=(40, 80, 192, 384), depths=(5, 5, 15, 10),
        expansion_ratios=((4,) * 5, (4,) * 5, (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
                          (4, 4, 4, 3, 3, 3, 3, 4, 4, 4)),
        attention_blocks=6, drop_path_rate=0.1),
}


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
            groups: int = 1) -> nn.Sequential:
    """Conv (with bias, as the official model) followed by BatchNorm; children named ``0`` and ``1``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups),
        nn.BatchNorm2d(out_channels))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


def scaled_residual(x: torch.Tensor, scale: torch.Tensor, branch: torch.Tensor, rate: float,
                    training: bool) -> torch.Tensor:
    """``x + drop_path(scale * branch)`` (a layer-scaled residual): one ``addcmul`` kernel where stochastic depth is
    off, as in inference, instead of a multiplication pass and an addition pass. An export keeps Mul and Add."""
    if (training and rate > 0.0) or plain():
        return x + drop_path(scale * branch, rate, training)
    return torch.addcmul(x, scale, branch)


def offset_index_table(query_side: int, key_side: int) -> torch.Tensor:
    """Index of the learned bias for every (query token, key token) pair, as the official tables number them.

    Queries sit on a ``query_side``^2 grid whose points are ``key_side // query_side`` key pixels apart; a pair's
    index is that of its absolute (row, column) offset, numbered in order of first appearance, which for these
    grids is ``|d_row| * key_side + |d_col|``.
    """
    step = math.ceil(key_side / query_side)
    q = torch.arange(query_side) * step
    k = torch.arange(key_side)
    d_row = (q[:, None, None, None] - k[None, None, :, None]).abs()
    d_col = (q[None, :, None, None] - k[None, None, None, :]).abs()
    return (d_row * key_side + d_col).reshape(query_side ** 2, key_side ** 2)


def resampled_bias(biases: torch.Tensor, index: torch.Tensor, queries: int, keys: int) -> torch.Tensor:
    """Gather the (heads, Nq0, Nk0) bias table and resample it bicubically to (1, heads, queries, keys)."""
    table = biases[:, index].unsqueeze(0)
    return F.interpolate(table, size=(queries, keys), mode="bicubic", align_corners=False)


class LearnedPositionBias:
    """The position-bias half of both attention modules: their ``attention_biases_seg`` table resampled to the
    token counts of the input, kept for reuse in inference."""

    attention_biases_seg: nn.Parameter
    attention_bias_idxs_seg: torch.Tensor
    _kept_bias: tuple | None = None

    def position_bias(self, queries: int, keys: int) -> torch.Tensor:
        """The table resampled to (1, heads, queries, keys).

        Without autograd (inference) the map for the last size is kept and reused while the table is unchanged
        (same tensor, same version, same stream): resampling took 8% of a CPU forward at 1024x1024. A kept map holds
        the memory of one attention map (OffSeg-T at 1024x2048 in FP32: 1.1 GB for its five). It is computed afresh
        and not kept while tracing (torch.compile, export, jit.trace: the table stays an input of the graph) or
        capturing a CUDA graph (the graph must own what it reads)."""
        biases, index = self.attention_biases_seg, self.attention_bias_idxs_seg
        if (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()
                or (biases.is_cuda and torch.cuda.is_current_stream_capturing())):
            return resampled_bias(biases, index, queries, keys)
        # a map is reused only on the stream that computed it: freed, its memory is reused in that stream's order
        stream = torch.cuda.current_stream(biases.device).cuda_stream if biases.is_cuda else None
        key = (queries, keys, biases.dtype, biases.device, stream, biases.data_ptr(), biases._version,
               index.data_ptr(), index._version)
        kept = self._kept_bias
        if kept is None or kept[0] != key:
            # the tables are held with the result, so no other tensor can take their addresses while it is kept
            kept = (key, (biases.detach(), index), resampled_bias(biases, index, queries, keys))
            self._kept_bias = kept
        return kept[2]

    def train(self, mode: bool = True):
        """Switching modes lets the kept map go (training after a validation gets its memory back)."""
        self._kept_bias = None
        return super().train(mode)


def mix_heads(conv: nn.Conv2d, attn: torch.Tensor) -> torch.Tensor:
    """A talking-heads 1x1 convolution over (B, heads, Nq, Nk) attention maps, as one batched matrix product.

    The same sums within float rounding, about 5x faster on the CPU, where a convolution with 8 channels over a
    million positions is slow (measured on 2 cores: 16 against 75 ms on a 1x8x1024x1024 map). An export keeps the
    convolution, the operator TensorRT and the INT8 precision rules see."""
    if plain():
        return conv(attn)
    b, heads = attn.shape[:2]
    weight = conv.weight.view(1, heads, heads).expand(b, heads, heads)
    return torch.baddbmm(conv.bias.view(1, heads, 1), weight, attn.flatten(2)).view_as(attn)


def attention_logits(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor) -> torch.Tensor:
    """``(q @ k) * scale + bias`` for queries (B, heads, Nq, d), keys (B, heads, d, Nk) and a (1, heads, Nq, Nk)
    position bias, as one batched matrix product with the scale and the bias in it: two kernels and two passes over
    the attention maps fewer (2.5-2.8x faster on the CPU for OffSeg's maps). An export keeps MatMul, Mul and Add."""
    if plain():
        return (q @ k) * scale + bias
    b, heads, queries, keys = *q.shape[:3], k.shape[-1]
    bias = bias.expand(b, heads, queries, keys).reshape(b * heads, queries, keys)  # a copy only for B > 1
    logits = torch.baddbmm(bias, q.reshape(b * heads, queries, -1), k.reshape(b * heads, -1, keys), alpha=scale)
    return logits.view(b, heads, queries, keys)


def attend(attn: torch.Tensor, v: torch.Tensor, v_local: torch.Tensor) -> torch.Tensor:
    """The attention output + the local values ``v_local`` (B, heads*dv, hq, wq), for maps (B, heads, Nq, Nk) over
    the values ``v`` (B, heads*dv, hk, wk) of their convolution: computed as v^T attn^T, already in the output's
    layout, so the plain form's transpose copy and addition ((attn @ v^T)^T reshaped, + v_local) are one batched
    product. An export keeps MatMul, Transpose and Add."""
    b, heads, queries, keys = attn.shape
    if plain():
        values = v.reshape(b, heads, -1, keys).transpose(2, 3)
        return (attn @ values).transpose(2, 3).reshape(v_local.shape) + v_local
    out = torch.baddbmm(v_local.reshape(b * heads, -1, queries), v.reshape(b * heads, -1, keys),
                        attn.reshape(b * heads, queries, keys).transpose(1, 2))
    return out.view(v_local.shape)


class Mlp(nn.Module):
    """1x1 expand -> BN -> GELU -> depthwise 3x3 -> BN -> GELU -> 1x1 project -> BN."""

    conv_bn_pairs = (("fc1", "norm1"), ("mid", "mid_norm"), ("fc2", "norm2"))

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.fc1(x)))
        x = F.gelu(self.mid_norm(self.mid(x)))
        return self.norm2(self.fc2(x))


class Attention4D(LearnedPositionBias, nn.Module):
    """Multi-head attention over a 2-D map with talking heads, a local value branch and learned position biases.

    With ``stride=2`` (last blocks of stage 2) attention runs at half resolution and is upsampled back.
    """

    def __init__(self, dim: int, resolution: int, stride: int | None, key_dim: int = 32, num_heads: int = 8,
                 attn_ratio: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.value_dim = attn_ratio * key_dim
        hidden = self.value_dim * num_heads
        if stride is not None:
            resolution = math.ceil(resolution / stride)
            self.stride_conv = conv_bn(dim, dim, 3, stride, groups=dim)
        else:
            self.stride_conv = None
        self.q = conv_bn(dim, key_dim * num_heads)
        self.k = conv_bn(dim, key_dim * num_heads)
        self.v = conv_bn(dim, hidden)
        self.v_local = conv_bn(hidden, hidden, 3, groups=hidden)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim))
        index = offset_index_table(resolution, resolution)
        self.attention_biases_seg = nn.Parameter(torch.zeros(num_heads, resolution ** 2))
        self.register_buffer("attention_bias_idxs_seg", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        b, _, h, w = x.shape
        q = self.q(x).reshape(b, self.num_heads, -1, h * w).transpose(2, 3)
        k = self.k(x).reshape(b, self.num_heads, -1, h * w)
        v = self.v(x)
        v_local = self.v_local(v)

        attn = attention_logits(q, k, self.scale, self.position_bias(h * w, h * w))
        attn = mix_heads(self.talking_head2, mix_heads(self.talking_head1, attn).softmax(dim=-1))
        out = attend(attn, v, v_local)
        if self.stride_conv is not None:
            out = F.interpolate(out, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        return self.proj(out)


class LocalGlobalQuery(nn.Module):
    """Stride-2 query: depthwise 3x3 conv plus plain subsampling, then 1x1 conv + BN."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.local = nn.Sequential(nn.Conv2d(dim, dim, 3, 2, 1, groups=dim))
        self.proj = conv_bn(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.local(x) + x[:, :, ::2, ::2])  # official AvgPool2d(1, 2) == subsampling


class Attention4DDownsample(LearnedPositionBias, nn.Module):
    """Attention with stride-2 queries: the attention half of the stage-3 downsampling."""

    def __init__(self, dim: int, out_dim: int, resolution: int, key_dim: int = 16, num_heads: int = 8,
                 attn_ratio: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        hidden = attn_ratio * key_dim * num_heads
        query_resolution = math.ceil(resolution / 2)
        self.q = LocalGlobalQuery(dim, key_dim * num_heads)
        self.k = conv_bn(dim, key_dim * num_heads)
        self.v = conv_bn(dim, hidden)
        self.v_local = conv_bn(hidden, hidden, 3, stride=2, groups=hidden)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, out_dim, 1), nn.BatchNorm2d(out_dim))
        index = offset_index_table(query_resolution, resolution)
        self.attention_biases_seg = nn.Parameter(torch.zeros(num_heads, resolution ** 2))
        self.register_buffer("attention_bias_idxs_seg", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.q(x)
        hq, wq = q.shape[-2:]
        q = q.reshape(b, self.num_heads, -1, hq * wq).transpose(2, 3)
        k = self.k(x).reshape(b, self.num_heads, -1, h * w)
        v = self.v(x)
        v_local = self.v_local(v)

        attn = attention_logits(q, k, self.scale, self.position_bias(hq * wq, h * w)).softmax(dim=-1)
        out = attend(attn, v, v_local)
        return self.proj(out)


class FFNBlock(nn.Module):
    """Residual MLP block with layer scale."""

    def __init__(self, dim: int, expansion: int, drop_path_rate: float):
        super().__init__()
        self.mlp = Mlp(dim, dim * expansion)
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_residual(x, self.layer_scale_2, self.mlp(x), self.drop_path_rate, self.training)


class AttentionBlock(nn.Module):
    """Residual attention block followed by a residual MLP, both with layer scale."""

    def __init__(self, dim: int, expansion: int, drop_path_rate: float, resolution: int, stride: int | None):
        super().__init__()
        self.token_mixer = Attention4D(dim, resolution, stride)
        self.mlp = Mlp(dim, dim * expansion)
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = scaled_residual(x, self.layer_scale_1, self.token_mixer(x), self.drop_path_rate, self.training)
        return scaled_residual(x, self.layer_scale_2, self.mlp(x), self.drop_path_rate, self.training)


class ConvDownsample(nn.Module):
    """3x3 stride-2 conv + BN between stages 0-1 and 1-2."""

    conv_bn_pairs = (("proj", "norm"),)

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class AttentionDownsample(nn.Module):
    """Stride-2 conv + BN plus stride-2 attention, between stages 2 and 3."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_dim: int, out_dim: int, resolution: int):
        super().__init__()
        self.attn = Attention4DDownsample(in_dim, out_dim, resolution)
        self.conv = nn.Conv2d(in_dim, out_dim, 3, 2, 1)
        self.bn = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x) + self.bn(self.conv(x))


class Stem(nn.Module):
    """Two 3x3 stride-2 conv + BN + GELU layers: stride 4."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_dim // 2, 3, 2, 1)
        self.bn1 = nn.BatchNorm2d(out_dim // 2)
        self.conv2 = nn.Conv2d(out_dim // 2, out_dim, 3, 2, 1)
        self.bn2 = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.bn2(self.conv2(F.gelu(self.bn1(self.conv1(x))))))


class Stage(nn.Module):
    """An optional downsampling layer followed by a sequence of blocks."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


class EfficientFormerV2(nn.Module):
    """The backbone: ``forward(x) -> [f4, f8, f16, f32]``."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.stem = Stem(config.widths[0])
        total_blocks = sum(config.depths)
        stages, first_block = [], 0
        for i, (dim, depth) in enumerate(zip(config.widths, config.depths)):
            resolution = math.ceil(TABLE_RESOLUTION / 2 ** (i + 2))
            downsample = None
            if i in (1, 2):
                downsample = ConvDownsample(config.widths[i - 1], dim)
            elif i == 3:
                downsample = AttentionDownsample(config.widths[2], dim, math.ceil(TABLE_RESOLUTION / 16))
            blocks = []
            for j in range(depth):
                rate = config.drop_path_rate * (first_block + j) / (total_blocks - 1)
                expansion = config.expansion_ratios[i][j]
                if i >= 2 and j >= depth - config.attention_blocks:
                    blocks.append(AttentionBlock(dim, expansion, rate, resolution, stride=2 if i == 2 else None))
                else:
                    blocks.append(FFNBlock(dim, expansion, rate))
            stages.append(Stage(downsample, blocks))
            first_block += depth
        self.stages = nn.ModuleList(stages)

    @property
    def out_channels(self) -> tuple[int, int, int, int]:
        return self.config.widths

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
