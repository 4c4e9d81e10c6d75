"""The official optimizer set-up: AdamW parameter groups by mmengine's ``paramwise_cfg.custom_keys`` rule, and the
LinearLR warm-up + PolyLR schedule.

mmengine gives each parameter the settings of the first custom key, in the order longest key first (ties
alphabetical), that occurs anywhere in its full name; parameters matching none keep the base lr and decay. The
official configs use ``pos_block`` (no decay), ``norm`` (no decay) and ``head`` (lr x10), so matching order is
``pos_block``, ``head``, ``norm``: the backbone's BatchNorms inside Sequentials and ``attention_biases_seg`` are
decayed, ``talking_head1/2`` get lr x10, and the decode head's GroupNorms are decayed with lr x10. The rule runs on
the official module names (``decode_head.*``, ``backbone.network.*``), which ours map to one-to-one.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .checkpoint import HEAD_RENAMES, STEM_LAYERS


@dataclass(frozen=True)
class CustomKey:
    lr_mult: float = 1.0
    decay_mult: float = 1.0


OFFICIAL_CUSTOM_KEYS = {"pos_block": CustomKey(decay_mult=0.0), "norm": CustomKey(decay_mult=0.0),
                        "head": CustomKey(lr_mult=10.0)}
DEFAULT_GROUP = "default"


def official_name(key: str) -> str:
    """Our state-dict key -> the official mmseg one (the inverse of ``checkpoint.official_to_ours``)."""
    parts = key.split(".")
    if parts[:2] == ["backbone", "stem"]:
        layer = {ours: official for official, ours in STEM_LAYERS.items()}[parts[2]]
        return ".".join(["backbone", "patch_embed", layer, *parts[3:]])
    if parts[:2] == ["backbone", "stages"]:
        stage, kind = int(parts[2]), parts[3]
        index = 2 * stage if kind == "blocks" else 2 * stage - 1
        return ".".join(["backbone", "network", str(index), *parts[4:]])
    if parts[0] == "head":
        key = "decode_head." + key[len("head."):]
        for official, ours in HEAD_RENAMES.items():
            key = key.replace(ours, official)
    return key


def matching_key(name: str, custom_keys: dict[str, CustomKey]) -> str | None:
    """The custom key mmengine applies to the parameter ``name`` (full dotted name), or None."""
    for key in sorted(sorted(custom_keys), key=len, reverse=True):
        if key in name:
            return key
    return None


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     custom_keys: dict[str, CustomKey] = OFFICIAL_CUSTOM_KEYS) -> list[dict]:
    """AdamW groups, one per matched custom key (``name``), with mmengine's lr and weight decay for each."""
    groups: dict[str, list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = matching_key(official_name(name), custom_keys)
            groups.setdefault(key or DEFAULT_GROUP, []).append(param)
    settings = {**custom_keys, DEFAULT_GROUP: CustomKey()}
    return [{"params": params, "name": key, "lr": lr * settings[key].lr_mult,
             "weight_decay": weight_decay * settings[key].decay_mult} for key, params in sorted(groups.items())]


def lr_factor(iteration: int, warmup: int, total: int, power: float) -> float:
    """mmseg's LinearLR(start_factor=1e-6, end=warmup) then PolyLR(power, eta_min=0, begin=warmup, end=total)."""
    if iteration < warmup:
        return 1e-6 + (1 - 1e-6) * iteration / warmup
    remaining = max(total - warmup, 1)
    return max(1 - (iteration - warmup) / remaining, 0.0) ** power
