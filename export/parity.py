"""Quick parity of an exported ONNX file against the PyTorch model it came from (ONNX Runtime, CPU)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .onnx import DeployModel, OnnxOptions, input_shape


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float | None  # logits outputs only
    label_agreement: float  # fraction of pixels whose argmax label matches

    def __str__(self) -> str:
        diff = f"max |logit diff| {self.max_abs_diff:.2e}, " if self.max_abs_diff is not None else ""
        return f"{diff}labels agree on {100 * self.label_agreement:.2f}% of pixels"


def example_images(options: OnnxOptions, seed: int = 0) -> np.ndarray:
    """A deterministic batch at the export size in the graph's input format."""
    shape = input_shape(options, 1 if options.dynamic else options.batch)
    rng = np.random.default_rng(seed)
    if options.input_format == "uint8-rgb":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if options.input_format == "float-rgb-0-255":
        return rng.integers(0, 256, shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32)


def onnx_parity(model: torch.nn.Module, onnx_path: Path, options: OnnxOptions) -> Parity:
    """Run PyTorch (unfused head, as trained) and ONNX Runtime on the same input and compare."""
    import onnxruntime as ort

    reference_options = OnnxOptions(**{**options.__dict__, "fused_head": False})
    images = example_images(options)
    with torch.no_grad():
        expected = DeployModel(model, reference_options).eval()(torch.from_numpy(images)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: images})[0]
    if options.output_kind == "labels":
        return Parity(None, float((actual == expected).mean()))
    axis = 3 if options.output_layout == "nhwc" else 1
    agreement = float((actual.argmax(axis) == expected.argmax(axis)).mean())
    return Parity(float(np.abs(actual.astype(np.float32) - expected).max()), agreement)
