"""The OffSeg decode head: per-scale 1x1 projections, three FreqFusions, an align conv and offset learning."""
from __future__ import annotations

import torch
from torch import nn

from .freqfusion import FreqFusion
from .offset_learning import OffsetLearning

GROUP_NORM_GROUPS = 32


class ConvGNReLU(nn.Module):
    """1x1 conv (no bias) + GroupNorm(32) + ReLU; children named like mmcv's ConvModule (``conv``, ``gn``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.gn = nn.GroupNorm(GROUP_NORM_GROUPS, out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.gn(self.conv(x)))


def interleave_channels(hr: torch.Tensor, lr: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """Concatenate two maps as [hr part 0, lr part 0, hr part 1, lr part 1, ...] (the official channel order)."""
    n, hr_channels, h, w = hr.shape
    lr_channels = lr.shape[1]
    # explicit channel counts: a -1 here leaves TensorRT unable to prove the next conv's channels static
    pairs = torch.cat([hr.reshape(n, parts, hr_channels // parts, h, w),
                       lr.reshape(n, parts, lr_channels // parts, h, w)], dim=2)
    return pairs.reshape(n, hr_channels + lr_channels, h, w)


class OffSegHead(nn.Module):
    """Four backbone maps (strides 4..32) -> (N, K, H/4, W/4) logits."""

    def __init__(self, in_channels: tuple[int, ...], new_channels: tuple[int, ...], num_classes: int,
                 channels: int = 256):
        super().__init__()
        self.pre = nn.ModuleList(ConvGNReLU(i, o) for i, o in zip(in_channels, new_channels))
        fusions, fused = [], new_channels[-1]
        for hr_channels in reversed(new_channels[:-1]):
            fusions.append(FreqFusion(hr_channels, fused, compressed_channels=(fused + hr_channels) // 4))
            fused += hr_channels
        self.freqfusions = nn.ModuleList(fusions)
        self.align = ConvGNReLU(sum(new_channels), channels)
        self.offset_learning = OffsetLearning(num_classes, channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        projected = [pre(f) for pre, f in zip(self.pre, features)]
        fused = projected[-1]
        for hr, fusion in zip(reversed(projected[:-1]), self.freqfusions):
            hr, upsampled = fusion(hr, fused)
            fused = interleave_channels(hr, upsampled)
        return self.offset_learning(self.align(fused))
