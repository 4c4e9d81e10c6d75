"""OffSeg = EfficientFormerV2 backbone + OffSeg head; ``forward`` returns the head's (N, K, H/4, W/4) logits."""
from __future__ import annotations

import torch
from torch import nn

from runtime.errors import OffsegError
from runtime.preprocess import SIZE_DIVISOR

from .efficientformer_v2 import EfficientFormerV2, BackboneConfig
from .head import OffSegHead


class OffSeg(nn.Module):
    """Normalized RGB images (N, 3, H, W), H and W multiples of 32 -> logits (N, K, H/4, W/4)."""

    def __init__(self, backbone: BackboneConfig, head_channels: tuple[int, ...], num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = EfficientFormerV2(backbone)
        self.head = OffSegHead(backbone.widths, head_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
            check_input_size(images.shape)
        return self.head(self.backbone(images))


def check_input_size(shape: torch.Size) -> None:
    """Raise OffsegError unless ``shape`` is (N, 3, H, W) with H and W multiples of 32."""
    if len(shape) != 4 or shape[1] != 3:
        raise OffsegError(f"OffSeg takes a batch of RGB images shaped (N, 3, H, W), got {tuple(shape)}")
    h, w = shape[-2:]
    if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise OffsegError(f"input size {h} {w} is not a multiple of {SIZE_DIVISOR}: resize or pad the image "
                          f"(offseg.predict pads automatically)")
