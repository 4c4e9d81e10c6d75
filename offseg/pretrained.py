"""ImageNet-pretrained EfficientFormerV2 backbones in the format released with EfficientFormerV2
(``eformer_s1_450.pth``, ``eformer_s2_450.pth``, ``eformer_l_450.pth``): a dict whose ``model`` entry is the
classifier's state dict (``patch_embed.*``, ``network.*``, plus the classification-only ``norm.*``, ``head.*``,
``dist_head.*`` and the 7x7 ``attention_biases`` / ``attention_bias_idxs`` tables).

The official recipe loads these into the segmentation backbone before training. The seg-resolution position biases
(``attention_biases_seg``) are not in the file and start from zero there as here.
"""
from __future__ import annotations

import logging
import os
import re

from torch import nn

from runtime.errors import OffsegError

from .checkpoint import load_state, official_to_ours, read_file

log = logging.getLogger(__name__)

CLASSIFICATION_ONLY = re.compile(r"^(norm|head|dist_head)\.|\.attention_biases$|\.attention_bias_idxs$")
NOT_IN_RELEASE = re.compile(r"\.attention_biases_seg$|\.attention_bias_idxs_seg$")


def release_state_dict(content: dict) -> dict:
    """The classifier's state dict inside a release file (``model``, ``state_dict`` or bare)."""
    state = content.get("model", content.get("state_dict", content))
    if not isinstance(state, dict) or not any(str(k).startswith("patch_embed.") for k in state):
        raise OffsegError("not an EfficientFormerV2 ImageNet checkpoint (expected a 'model' dict with "
                          "patch_embed.* and network.* keys)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _our_name(key: str) -> str:
    """A classifier key -> our backbone key (unchanged when it has no counterpart, so it is reported)."""
    try:
        return official_to_ours(f"backbone.{key}").removeprefix("backbone.")
    except (KeyError, ValueError):
        return key


def load_pretrained_backbone(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load an EfficientFormerV2 ImageNet release into ``model.backbone``, strictly; returns the dropped keys.

    Every backbone tensor but the seg-resolution biases must be in the file with the same shape, and every file
    key must be a backbone tensor or a classification-only one; otherwise OffsegError names the keys. Weights
    only: the file is read with torch's weights-only unpickler.
    """
    state = release_state_dict(read_file(path))
    dropped = [key for key in state if CLASSIFICATION_ONLY.search(key)]
    converted = {_our_name(key): value for key, value in state.items() if key not in dropped}
    current = model.backbone.state_dict()
    converted.update({k: v for k, v in current.items() if NOT_IN_RELEASE.search(k)})
    load_state(model.backbone, converted, source=f"pretrained backbone {path}")
    log.info("pretrained backbone %s: loaded %d tensors; dropped %d classification-only keys: %s", path,
             len(state) - len(dropped), len(dropped), ", ".join(dropped))
    return dropped
