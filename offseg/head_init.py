"""The decode head's initialisation as the official model gets it before training.

mmcv's ``ConvModule`` initialises its conv with ``kaiming_init`` (normal, fan_out, ReLU, bias 0) and its norm with
1 / 0; the official FreqFusion's ``init_weights`` sets every Conv2d inside it (the sampler's included) to
Xavier-uniform with bias 0, then its two kernel generators (``content_encoder``, ``content_encoder2``) to
N(0, 0.001). Offset learning initialises itself already (truncated normal, std 0.02). Our modules are built with
PyTorch's default initialisation, which fits loading checkpoints; training from scratch or from an ImageNet
backbone starts from this one.
"""
from __future__ import annotations

from torch import nn

KERNEL_GENERATOR_STD = 0.001


def _zero_bias(conv: nn.Conv2d) -> None:
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_head_like_official(head: nn.Module) -> None:
    """Re-initialise an ``OffSegHead`` in place the way the official head is initialised."""
    for block in (*head.pre, head.align):
        nn.init.kaiming_normal_(block.conv.weight, mode="fan_out", nonlinearity="relu")
        _zero_bias(block.conv)
        nn.init.ones_(block.gn.weight)
        nn.init.zeros_(block.gn.bias)
    for fusion in head.freqfusions:
        for module in fusion.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                _zero_bias(module)
        for generator in (fusion.content_encoder, fusion.content_encoder2):
            nn.init.normal_(generator.weight, std=KERNEL_GENERATOR_STD)
            _zero_bias(generator)
