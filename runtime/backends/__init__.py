"""One small interface over the inference engines: ONNX Runtime (``.onnx``), TensorRT (``.plan``) and PyTorch
(``.pth``, only when torch is installed). ``open_backend`` picks the implementation from the file."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import OffsegError


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a model, read from its metadata (ONNX props / engine sidecar)."""

    name: str
    num_classes: int
    input_size: tuple[int, int] | None  # None: dynamic height/width
    uint8_input: bool  # normalization folded into the graph
    output_kind: str  # logits or labels
    max_batch: int | None = None  # None: any
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], **overrides) -> ModelInfo:
        """From ``offseg.*`` ONNX metadata (the engine sidecar keeps the same keys without the prefix)."""
        get = lambda key, default=None: meta.get(f"offseg.{key}", meta.get(key, default))  # noqa: E731
        if get("model") is None:
            raise OffsegError("the model file has no offseg metadata; export it with offseg-export")
        size = get("input_size", "dynamic")
        values = dict(
            name=get("model"), num_classes=int(get("num_classes")),
            input_size=None if size == "dynamic" else tuple(int(v) for v in size.split()),
            uint8_input=get("input_format", "").startswith("uint8"), output_kind=get("output_kind", "logits"),
            classes=tuple(json.loads(get("classes", "[]"))),
            palette=tuple(tuple(c) for c in json.loads(get("palette", "[]"))), precision=get("precision", "fp32"))
        return cls(**{**values, **overrides})


class Backend(Protocol):
    info: ModelInfo
    description: str

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) model input (float32 normalized or uint8) -> logits (N, K, h, w) or labels (N, H, W)."""

    def close(self) -> None: ...


def open_backend(path: str | Path, providers: list[str] | None = None, cuda: str = "auto") -> Backend:
    """The backend for ``path``: ``.onnx`` -> ONNX Runtime, ``.plan``/``.engine`` -> TensorRT, ``.pth`` -> PyTorch."""
    path = Path(path)
    if not path.is_file():
        how = {".plan": "build one on this device with: offseg-export --onnx MODEL.onnx --format engine --fp16",
               ".engine": "build one on this device with: offseg-export --onnx MODEL.onnx --format engine --fp16",
               ".onnx": "make one with: offseg-export --checkpoint CKPT.pth --output MODEL.onnx"}
        hint = how.get(path.suffix.lower(), "give an .onnx model, a TensorRT .plan or a .pth checkpoint")
        raise OffsegError(f"model file not found: {path}; {hint}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .ort_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(path, providers)
    if suffix in (".plan", ".engine", ".trt"):
        from .trt_backend import TensorRTBackend
        return TensorRTBackend(path, cuda)
    if suffix in (".pth", ".pt"):
        from .torch_backend import TorchBackend
        return TorchBackend(path)
    raise OffsegError(f"cannot tell the backend from {path.name}: use .onnx, .plan/.engine or .pth")
