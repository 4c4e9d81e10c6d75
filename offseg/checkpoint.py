"""Loading official mmseg/mmengine checkpoints and our own, saving ours.

Files are read with torch's weights-only unpickler, so no pickled code ever runs. mmengine checkpoints may carry
objects of classes that are not installed here (message hub, history buffers, numpy scalars in ``meta``): those
are rebuilt as inert placeholders, which lets a valid file load; the weights themselves must be plain tensors.
Weights are strict: a missing, unexpected or mis-shaped key is an error naming it. The only official keys skipped
are the documented unused ones (``decode_head.conv_seg.*`` and the classification-leftover attention buffers).
"""
from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime.backends import ENGINE_SUFFIXES
from runtime.errors import OffsegError
from runtime.sinks import write_file

log = logging.getLogger(__name__)

FORMAT = "offseg"  # marker of our own checkpoint format
TRAINING_KEYS = ("state_dict", "optimizer", "scheduler", "iteration", "rng")  # what offseg-train --resume needs
LISTED_KEYS = 5  # keys named per kind of mismatch; the count says how many more there are
UNUSED_OFFICIAL_KEY = re.compile(r"^decode_head\.conv_seg\.|\.attention_biases$|\.attention_bias_idxs$")
STEM_LAYERS = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}
HEAD_RENAMES = {
    "offset_learning.cls_repr": "offset_learning.class_embed",
    "offset_learning.cls_offset_proj.": "offset_learning.class_offset_proj.",
    "offset_learning.feat_offset_proj.": "offset_learning.feature_offset_proj.",
}


ZIP_START = b"PK"  # how torch.save's files start: a zip archive,
PICKLE_START = b"\x80"  # or (its older format) a pickle of protocol 2 or later


class InertObject:
    """Stands in for an object of a class that is not installed; keeps its constructor args and state as data."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def read_file(path: str | os.PathLike) -> dict:
    """Unpickle a checkpoint safely (weights only; unknown classes become ``InertObject`` placeholders)."""
    path = Path(path)
    if not path.is_file():
        raise OffsegError(f"checkpoint {path} does not exist or is not a file")
    try:
        with path.open("rb") as stream:
            start = stream.read(len(ZIP_START))
            zipped = zipfile.is_zipfile(stream)
    except OSError as error:
        raise OffsegError(f"cannot read checkpoint {path}: {error.strerror or error}") from error
    if start and start != ZIP_START and not start.startswith(PICKLE_START):  # empty or cut short: torch says so
        raise OffsegError(f"cannot read checkpoint {path}: {_not_weights(path)}")
    try:
        # legacy (non-zip) files are read by the same weights-only unpickler, without the placeholder scan
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(path) if zipped else []
        placeholders = [(type(name.rsplit(".", 1)[-1], (InertObject,), {}), name) for name in unknown]
        with torch.serialization.safe_globals(placeholders):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise OffsegError(f"cannot read checkpoint {path}: {_reason(error)}") from error
    if not isinstance(content, dict):
        raise OffsegError(f"checkpoint {path} holds a {type(content).__name__}, not a dict of weights")
    return content


def _not_weights(path: Path) -> str:
    """Why a file that is not torch.save's is not read, pointing an exported model to the command that scores it."""
    kind = {".onnx": "an ONNX model", **dict.fromkeys(ENGINE_SUFFIXES, "a TensorRT engine")}.get(path.suffix.lower())
    if kind is None:
        return "it is not a PyTorch file of weights (neither torch.save's zip archive nor its older pickle format)"
    return (f"it is {kind}, not a PyTorch checkpoint: give the .pth it was exported from (offseg-validate --engine "
            f"{path} --checkpoint CHECKPOINT scores it against that checkpoint)")


def checkpoint_labels(content: dict, num_classes: int | None = None,
                      source: str = "the checkpoint") -> tuple[list[str] | None, list[list[int]] | None]:
    """Class names and RGB palette a checkpoint carries: ours (top level), mmseg 1.x (``meta.dataset_meta``) or
    mmseg 0.x (``meta.CLASSES`` / ``meta.PALETTE``); None for what it lacks.

    Checked as read (a checkpoint is untrusted input): OffsegError naming ``source`` unless the names are strings
    and the palette rows are 3 whole numbers 0-255, one per class (``num_classes`` when given)."""
    meta = content.get("meta") if isinstance(content.get("meta"), dict) else {}
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    classes = _first_given(content.get("classes"), dataset_meta.get("classes"), meta.get("CLASSES"))
    palette = _first_given(content.get("palette"), dataset_meta.get("palette"), meta.get("PALETTE"))
    if classes is not None:
        if not isinstance(classes, (list, tuple)) or not all(isinstance(name, str) for name in classes):
            raise OffsegError(f"{source}: its class names are not a list of strings ({_shown(classes)}); remove "
                              "them from the checkpoint, or save it with offseg-train")
        if num_classes is not None and len(classes) != num_classes:
            raise OffsegError(f"{source} names {len(classes)} classes but its weights predict {num_classes}")
    if palette is not None:
        count = num_classes if num_classes is not None else len(classes) if classes else None
        rows_ok = isinstance(palette, (list, tuple)) and all(
            isinstance(c, (list, tuple)) and len(c) == 3 and all(_is_byte(v) for v in c) for c in palette)
        if not rows_ok or (count is not None and len(palette) != count):
            raise OffsegError(f"{source}: its palette is not a list of {count or 'N'} RGB colours (rows of 3 whole "
                              f"numbers 0-255): {_shown(palette)}")
    return ([name.strip() for name in classes] if classes else None,
            [[int(v) for v in colour] for colour in palette] if palette else None)


def _first_given(*candidates: Any) -> Any:
    """The first candidate that is there (an empty list counts as absent)."""
    return next((value for value in candidates if value is not None and not (
        isinstance(value, (list, tuple)) and not value)), None)


def _is_byte(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _reason(error: Exception) -> str:
    """The informative line of torch's (long) load error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = [line for line in lines if "GLOBAL" in line]
    if refused:
        return f"refused to unpickle code ({refused[0]})"
    if isinstance(error, EOFError):
        return "the file ends early (empty or cut short)"
    # torch's first line advises turning the weights-only reader off, which would run code from the file: not shown
    detail = next((line for before, line in zip(lines, lines[1:]) if before.endswith("WeightsUnpickler error:")), None)
    if detail is not None:
        return f"it is not a PyTorch file of weights (the weights-only reader: {detail})"
    return lines[0] if lines else type(error).__name__


def official_to_ours(key: str) -> str:
    """Rename one official mmseg state-dict key to this package's module names."""
    if key.startswith("backbone.patch_embed."):
        layer, rest = key[len("backbone.patch_embed."):].split(".", 1)
        return f"backbone.stem.{STEM_LAYERS[layer]}.{rest}"
    if key.startswith("backbone.network."):
        index, rest = key[len("backbone.network."):].split(".", 1)
        index = int(index)
        if index % 2 == 0:
            return f"backbone.stages.{index // 2}.blocks.{rest}"
        return f"backbone.stages.{(index + 1) // 2}.downsample.{rest}"
    if key.startswith("decode_head."):
        key = "head." + key[len("decode_head."):]
        for old, new in HEAD_RENAMES.items():
            key = key.replace(old, new)
    return key


def extract_state_dict(content: dict) -> dict[str, torch.Tensor]:
    """Our-named weights from a loaded checkpoint of either format (or a bare state dict)."""
    state = content.get("state_dict", content.get("model", content))
    if not isinstance(state, dict) or not state:
        raise OffsegError("checkpoint has no state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise OffsegError(f"checkpoint weights must be tensors; not so for {', '.join(bad[:5])}")
    if content.get("format") == FORMAT:
        return state
    if not any(k.startswith(("backbone.patch_embed.", "decode_head.")) for k in state):
        return state  # a bare state dict of ours
    return {official_to_ours(k): v for k, v in state.items() if not UNUSED_OFFICIAL_KEY.search(k)}


def checkpoint_num_classes(state: dict[str, torch.Tensor]) -> int:
    """Number of classes a (converted) state dict was trained for."""
    try:
        return state["head.offset_learning.class_embed"].shape[1]
    except KeyError:
        raise OffsegError("checkpoint has no OffSeg class embedding (head.offset_learning / "
                          "decode_head.offset_learning.cls_repr): is it an OffSeg checkpoint?") from None


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` strictly; raises OffsegError for a mismatch: it names the registry model the
    tensors fit when that is another one, else counts the missing/unexpected/mis-shaped keys and names a few."""
    expected = model.state_dict()
    kinds = {"missing": [k for k in expected if k not in state],
             "unexpected": [k for k in state if k not in expected],
             "wrong shape": [f"{k} {tuple(state[k].shape)} (model wants {tuple(v.shape)})"
                             for k, v in expected.items() if k in state and state[k].shape != v.shape]}
    if not any(kinds.values()):
        model.load_state_dict(state, strict=True)
        return
    theirs = matching_model_name(state)
    if theirs is not None and theirs != matching_model_name(expected):
        raise OffsegError(f"{source} does not fit the model: this looks like an {theirs} checkpoint; pass --model "
                          f"{theirs}, or leave --model out")
    counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in kinds.items() if keys)
    named = [f"{kind}: {key}" for kind, keys in kinds.items() for key in keys][:LISTED_KEYS]
    raise OffsegError(f"{source} does not fit the model{_class_count_hint(state, expected)} ({counts}): "
                      + "; ".join(named) + (" ..." if sum(map(len, kinds.values())) > LISTED_KEYS else ""))


def _class_count_hint(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    key = "head.offset_learning.class_embed"
    if key in state and key in expected and state[key].shape != expected[key].shape:
        return f" (the checkpoint is for {checkpoint_num_classes(state)} classes; build the model with that many)"
    return ""


def matching_model_name(state: dict[str, torch.Tensor]) -> str | None:
    """The registry model whose every tensor name and shape ``state`` matches (None if none does)."""
    from .zoo import MODELS, build_model
    embed = state.get("head.offset_learning.class_embed")
    if embed is None or embed.dim() < 2:
        return None
    for name in MODELS:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            expected = build_model(name, embed.shape[1]).state_dict()
        if expected.keys() == state.keys() and all(v.shape == state[k].shape for k, v in expected.items()):
            return name
    return None


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load an official mmseg checkpoint or one of ours into ``model``; returns the file's ``meta`` dict.

    Call ``model.eval()`` afterwards for inference. Raises OffsegError for unreadable or non-fitting files.
    """
    content = read_file(path)
    load_state(model, extract_state_dict(content), source=f"checkpoint {path}")
    log.info("loaded %s", path)
    meta = content.get("meta")
    return meta if isinstance(meta, dict) else {}


def save_checkpoint(model: nn.Module, path: str | os.PathLike, model_name: str,
                    classes: list[str] | None = None, **meta: Any) -> Path:
    """Write our own checkpoint format atomically (a partial file never appears under ``path``); ``classes``
    (names) travel with it into exports and legends."""
    path = Path(path)
    content = {"format": FORMAT, "model": model_name, "num_classes": model.num_classes,
               "state_dict": model.state_dict(), "meta": meta, **({"classes": classes} if classes else {})}
    write_file(path, serialize(content))
    return path


def serialize(content: dict) -> bytes:
    """``torch.save`` into memory: written by ``write_file``, a full disk is one sentence with the bytes needed
    (torch's own writer turns it into a RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def checkpoint_model_name(content: dict, state: dict[str, torch.Tensor]) -> str:
    """The registry name a checkpoint was made for (stored in ours, inferred from the widths for official ones)."""
    from .zoo import MODELS
    if isinstance(content.get("model"), str) and content["model"] in MODELS:
        return content["model"]
    width = state.get("backbone.stages.3.downsample.conv.weight")
    for spec in MODELS.values():
        if width is not None and width.shape[0] == spec.backbone.widths[3]:
            return spec.name
    raise OffsegError("cannot tell which OffSeg model this checkpoint is for; pass the model name explicitly")


def checkpoint_model(path: str | os.PathLike) -> str:
    """The registry name of the model the checkpoint file ``path`` was made for (``checkpoint_model_name``)."""
    content = read_file(path)
    return checkpoint_model_name(content, extract_state_dict(content))


def build_from_checkpoint(path: str | os.PathLike, model_name: str | None = None,
                          content: dict | None = None) -> tuple[nn.Module, str]:
    """Build the right model for a checkpoint (name and class count from the file), load it, switch to eval.
    ``content``: the file as ``read_file`` returned it, for a caller that reads more of it (not read again).

    Returns (model, model name).
    """
    from .zoo import build_model
    content = read_file(path) if content is None else content
    state = extract_state_dict(content)
    name = model_name or checkpoint_model_name(content, state)
    model = build_model(name, checkpoint_num_classes(state))
    load_state(model, state, source=f"checkpoint {path}")
    return model.eval(), name


def read_training_state(path: str | os.PathLike) -> dict:
    """A training checkpoint written by offseg-train (read weights-only, like every checkpoint).

    Raises OffsegError for any other file: a foreign, random or weights-only file must not be resumed from.
    """
    content = read_file(path)
    missing = [key for key in TRAINING_KEYS if key not in content]
    if content.get("format") != FORMAT or missing or not isinstance(content.get("iteration"), int):
        lacking = ", ".join(missing) if missing else "the offseg format marker and iteration count"
        raise OffsegError(f"{path} is not an offseg-train checkpoint (it lacks {lacking}); move it away to start "
                          "afresh, or pass another --work-dir")
    return content
