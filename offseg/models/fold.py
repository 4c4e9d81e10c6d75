"""BatchNorm folded into the convolution before it, for inference: one kernel per Conv+BN instead of two.

Every BatchNorm of OffSeg sits right after a convolution whose output nothing else reads: either the next child of an
``nn.Sequential``, or a pair a module names in its ``conv_bn_pairs`` attribute. In eval mode the BN is an affine map
per channel, so ``conv -> BN`` equals one conv with scaled weights and a shifted bias. The result differs from the
unfolded model by float rounding only (tests: T/B/L within 1e-4 of the reference logits).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into its convolution (``model`` is unchanged;
    folding a folded model changes nothing).

    Raises ValueError if a BatchNorm is left that follows no known convolution: the copy would not be exact to
    fold, and leaving it in place silently would hide a model change."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        for conv_name, bn_name in _pairs(module):
            if isinstance(getattr(module, bn_name), nn.Identity):  # folded already
                continue
            _fold_into(getattr(module, conv_name), getattr(module, bn_name))
            setattr(module, bn_name, nn.Identity())
    left = [name for name, module in folded.named_modules() if isinstance(module, _BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm layers that follow no known convolution: {', '.join(left)}")
    return folded


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """{convolution's module path: the BatchNorm's after it} in ``model``. An ONNX export fuses each pair into one
    Conv node, named after the BatchNorm's module."""
    return {f"{name}.{conv}".lstrip("."): f"{name}.{bn}".lstrip(".")
            for name, module in model.named_modules() for conv, bn in _pairs(module)}


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv attribute, BN attribute) names in ``module``: declared pairs, or adjacent children of a Sequential."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        return [(a, b) for a, b in zip(names, names[1:])
                if isinstance(module._modules[a], nn.Conv2d) and isinstance(module._modules[b], _BatchNorm)]
    return list(getattr(module, "conv_bn_pairs", ()))


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """conv <- BN(conv(.)): weights scaled per output channel, bias shifted (computed in float64, stored as is)."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, _BatchNorm) or not bn.affine or not bn.track_running_stats:
        raise ValueError(f"cannot fold {type(bn).__name__} into {type(conv).__name__}")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    shifted = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    conv.weight.copy_((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.empty_like(bn.bias))
    conv.bias.copy_(shifted.to(conv.bias.dtype))
