"""One small interface over the inference engines: ONNX Runtime (``.onnx``), TensorRT (``.plan``) and PyTorch
(``.pth``, only when torch is installed). ``open_backend`` picks the implementation from the file."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import OffsegError
from ..limits import check_tensor_bytes
from ..preprocess import INPUT_FORMATS, INPUT_LAYOUTS, input_format_text

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")  # TensorRT engines
CHECKPOINT_SUFFIXES = (".pth", ".pt")  # PyTorch checkpoints
OUTPUT_KINDS = ("logits", "labels", "probs")  # probs: softmax of the logits, same shape
LABEL_DTYPES = ("uint8", "int32")
LAYOUTS = ("nchw", "nhwc")  # of the output: (N, K, h, w) / (N, H, W), or (N, h, w, K) / (N, H, W, 1)


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a model, read from its metadata (ONNX props / engine sidecar)."""

    name: str
    num_classes: int
    input_size: tuple[int, int] | None  # None: dynamic height/width
    input_format: str  # a key of runtime.preprocess.INPUT_FORMATS
    output_kind: str  # one of OUTPUT_KINDS
    max_batch: int | None = None  # None: any
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    precision: str = "fp32"
    trained: bool = True  # False: exported without a checkpoint (random weights, predictions are noise)
    output_layout: str = "nchw"
    input_layout: str = "nchw"  # one of runtime.preprocess.INPUT_LAYOUTS: (N, 3, H, W) or (N, H, W, 3)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "the model file", **overrides) -> ModelInfo:
        """From ``offseg.*`` ONNX metadata (the engine sidecar keeps the same keys without the prefix).

        Every value is checked (metadata is untrusted input): OffsegError names ``source`` and the bad key.
        """
        if not isinstance(meta, dict) or _get(meta, "model") is None:
            raise OffsegError(f"{source} has no offseg metadata; export it with offseg-export")
        num_classes = _whole_number(meta, "num_classes", source)
        input_layout = _choice(meta, "input_layout", "nchw", INPUT_LAYOUTS, source)
        values = dict(
            name=str(_get(meta, "model")), num_classes=num_classes, input_size=_input_size(meta, source),
            input_format=_input_format(meta, input_layout, source), input_layout=input_layout,
            output_kind=_choice(meta, "output_kind", "logits", OUTPUT_KINDS, source),
            output_layout=_choice(meta, "output_layout", "nchw", LAYOUTS, source),
            classes=_classes(meta, num_classes, source), palette=_palette(meta, num_classes, source),
            precision=str(_get(meta, "precision", "fp32")),
            trained=not str(_get(meta, "weights", "")).startswith("RANDOM"))
        return cls(**{**values, **overrides})

    def check_graph(self, input_shape: list, output_shape: list, source: str) -> None:
        """OffsegError when the metadata contradicts the graph's real shapes (dimensions: int, or None/str when
        dynamic), e.g. a forged input size or class count, or when a fixed size implies a tensor above
        ``limits.MAX_TENSOR_BYTES``."""
        dims = [d if isinstance(d, int) and d > 0 else None for d in input_shape]
        nhwc_input = self.input_layout == "nhwc"
        if len(dims) != 4 or dims[3 if nhwc_input else 1] != 3:
            shown = [d if d is not None else "?" for d in dims]
            raise OffsegError(f"{source} says its input is {self.input_layout} "
                              f"{'(N, H, W, 3)' if nhwc_input else '(N, 3, H, W)'} but its graph takes {shown}")
        spatial = dims[1:3] if nhwc_input else dims[2:]
        graph_size = None if None in spatial else tuple(spatial)
        if self.input_size is not None and graph_size is not None and self.input_size != graph_size:
            raise OffsegError(f"{source} says input {_hw(self.input_size)} but its graph takes {_hw(graph_size)}")
        if self.input_size is None and graph_size is not None:
            raise OffsegError(f"{source} says its input size is dynamic but its graph takes {_hw(graph_size)}")
        labels, nhwc = self.output_kind == "labels", self.output_layout == "nhwc"
        wanted = self.output_shape()
        if len(output_shape) != wanted.count(",") + 1 or (labels and nhwc and output_shape[3] != 1):
            raise OffsegError(f"{source} says its output is {self.output_kind} ({self.output_layout}) but its graph "
                              f"outputs {len(output_shape)}-D {list(output_shape)}, not {wanted}")
        classes = None if labels else output_shape[3 if nhwc else 1]
        if isinstance(classes, int) and classes > 0 and classes != self.num_classes:
            raise OffsegError(f"{source} says {self.num_classes} classes but its graph outputs {classes}")
        batch = self.max_batch or 1
        size = self.input_size or graph_size
        if size is not None:
            check_tensor_bytes((batch, 3, *size), 1 if self.input_format == "uint8-rgb" else 4, f"{source}'s input")
        if all(isinstance(d, int) and d > 0 for d in output_shape[1:]):
            check_tensor_bytes((batch, *output_shape[1:]), 4, f"{source}'s output")

    def output_shape(self, classes: str = "K") -> str:
        """The output's dimensions as text: ``(N, K, h, w)`` scores or ``(N, H, W)`` labels, in its layout."""
        if self.output_kind == "labels":
            return "(N, H, W, 1)" if self.output_layout == "nhwc" else "(N, H, W)"
        return f"(N, h, w, {classes})" if self.output_layout == "nhwc" else f"(N, {classes}, h, w)"

    def planar(self, outputs: np.ndarray) -> np.ndarray:
        """A backend's output in our layout: (N, K, h, w) scores (logits or probabilities) or (N, H, W) labels."""
        if self.output_layout == "nchw":
            return outputs
        return outputs[..., 0] if self.output_kind == "labels" else outputs.transpose(0, 3, 1, 2)


MAX_CLASSES = 65535  # label PNGs are uint16 at most


def _get(meta: dict, key: str, default=None):
    return meta.get(f"offseg.{key}", meta.get(key, default))


def _label(meta: dict, key: str) -> str:
    return key if key in meta and f"offseg.{key}" not in meta else f"offseg.{key}"


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _whole_number(meta: dict, key: str, source: str) -> int:
    value = _get(meta, key)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise OffsegError(f"{source}: {_label(meta, key)} {value!r} is not a whole number") from None
    if not 1 <= number <= MAX_CLASSES:
        raise OffsegError(f"{source}: {_label(meta, key)} {number} is outside 1-{MAX_CLASSES}")
    return number


def _input_size(meta: dict, source: str) -> tuple[int, int] | None:
    value = _get(meta, "input_size", "dynamic")
    if value == "dynamic":
        return None
    parts = str(value).split()
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise OffsegError(f"{source}: {_label(meta, 'input_size')} {value!r} is not 'H W' or 'dynamic'")
    return int(parts[0]), int(parts[1])


def _choice(meta: dict, key: str, default: str, choices: tuple[str, ...], source: str) -> str:
    value = _get(meta, key, default)
    if value not in choices:
        raise OffsegError(f"{source}: {_label(meta, key)} {value!r} is not one of {', '.join(choices)}")
    return value


def _input_format(meta: dict, input_layout: str, source: str) -> str:
    """The INPUT_FORMATS key of ``offseg.input_format``, whose text names the layout (``uint8 RGB NHWC``): it must
    be the layout ``offseg.input_layout`` says."""
    value = _get(meta, "input_format", input_format_text("normalized", input_layout))
    names = {input_format_text(name, input_layout): name for name in INPUT_FORMATS}
    if value in names:
        return names[value]
    other = {input_format_text(name, layout) for name in INPUT_FORMATS for layout in INPUT_LAYOUTS} - set(names)
    if value in other:
        raise OffsegError(f"{source}: {_label(meta, 'input_format')} {value!r} contradicts "
                          f"{_label(meta, 'input_layout')} {input_layout!r}")
    raise OffsegError(f"{source}: {_label(meta, 'input_format')} {value!r} is not one of "
                      f"{', '.join(map(repr, names))}")


def _json_list(meta: dict, key: str) -> list | None:
    value = _get(meta, key, "[]")
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return None
    return parsed if isinstance(parsed, list) else None


def _classes(meta: dict, num_classes: int, source: str) -> tuple[str, ...]:
    names = _json_list(meta, "classes")
    if names is None or not all(isinstance(n, str) for n in names):
        raise OffsegError(f"{source}: {_label(meta, 'classes')} is not a JSON list of names")
    if names and len(names) != num_classes:
        raise OffsegError(f"{source}: {_label(meta, 'classes')} names {len(names)} classes, not {num_classes}")
    return tuple(names)


def _palette(meta: dict, num_classes: int, source: str) -> tuple[tuple[int, int, int], ...]:
    colours = _json_list(meta, "palette")
    valid = colours is not None and (not colours or len(colours) == num_classes) and all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colours)
    if not valid:
        raise OffsegError(f"{source}: {_label(meta, 'palette')} is not a JSON list of {num_classes} RGB colours")
    return tuple(tuple(c) for c in colours)


class Backend(Protocol):
    info: ModelInfo
    description: str

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) or (N, H, W, 3) model input (``info.input_format``, ``info.input_layout``) -> the graph's
        output (``info.planar`` puts it in our layout)."""

    def close(self) -> None: ...

    # A backend that may wait inside ``infer`` (Triton's, for a server that stopped answering) also has
    # ``cancel()``, which the pipeline calls when it stops, before it waits for the inference thread.


def _how_to_make(suffix: str) -> str:
    """Advice for a missing model file that this machine can follow."""
    from ..device import module_installed
    if suffix in ENGINE_SUFFIXES:
        if not module_installed("tensorrt"):
            return ("this machine has no TensorRT, so it cannot run engines: run the ONNX model here (offseg-run "
                    "--engine MODEL.onnx), and build the engine on the device that will run it (there: offseg-export "
                    "--onnx MODEL.onnx --format engine --fp16)")
        return "build one on this device with: offseg-export --onnx MODEL.onnx --format engine --fp16"
    if suffix == ".onnx":
        return "make one with: offseg-export --checkpoint CKPT.pth --output MODEL.onnx"
    return "give an .onnx model, a TensorRT .plan or a .pth checkpoint"


def package_models(folder: Path) -> tuple[str, list[Path]] | None:
    """What offseg-export package ``folder`` is (``--format triton`` / ``deepstream``) and its model files; None
    for any other folder."""
    models = sorted(folder.glob("*/[0-9]*/model.onnx")) + sorted(folder.glob("*/[0-9]*/model.plan"))
    if models:
        return "Triton model repository", models
    models = sorted(folder.glob("*.onnx")) if (folder / "config_infer_primary_offseg.txt").is_file() else []
    return ("DeepStream package", models[:1]) if models else None


def _model_in_folder(folder: Path) -> str | None:
    """Where the model of an offseg-export package is, for a user who gave the folder; None for any other folder."""
    package = package_models(folder)
    if package is None:
        return None
    kind, models = package
    if kind == "DeepStream package":
        return f"it is a DeepStream package; its model file is {models[0]} (offseg-validate --deepstream {folder} " \
            "checks the package as nvinfer runs it)"
    return f"it is a Triton model repository; its model file{'s are' if len(models) > 1 else ' is'} " + \
        ", ".join(map(str, models)) + " (a server runs the repository itself: offseg-run --triton URL)"


def open_backend(path: str | Path, providers: list[str] | None = None, cuda: str = "auto",
                 device: str = "auto", *, allow_engine_host_code: bool = False) -> Backend:
    """The backend for ``path``: ``.onnx`` -> ONNX Runtime, ``.plan``/``.engine`` -> TensorRT (CUDA binding
    ``cuda``), ``.pth`` -> PyTorch (on torch device ``device``: auto, cpu, cuda, cuda:N).

    ``allow_engine_host_code``: let a version-compatible engine run the lean TensorRT runtime it carries (code from
    the file, run in this process); the user's decision (``--allow-engine-host-code``), never the sidecar's."""
    path = Path(path)
    if path.is_dir():
        raise OffsegError(f"{path} is a folder, not a model file: {_model_in_folder(path) or _how_to_make('')}")
    if not path.is_file():
        raise OffsegError(f"model file not found: {path}; {_how_to_make(path.suffix.lower())}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .ort_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(path, providers)
    if suffix in ENGINE_SUFFIXES:
        from .trt_backend import TensorRTBackend
        return TensorRTBackend(path, cuda, allow_engine_host_code)
    if suffix in CHECKPOINT_SUFFIXES:
        from .torch_backend import TorchBackend
        return TorchBackend(path, device)
    raise OffsegError(f"cannot tell the backend from {path.name}: use .onnx, .plan/.engine or .pth")
