"""Which parts of the network cost mIoU in INT8: quantize one group of layers at a time (the rest float) and
measure the mIoU of its labels against the FP32 model's labels on validation images.

Groups are the modules the Conv nodes belong to (``backbone.stages.2``, ``FreqFusion0``, ...), read from the node
names (``module.path/node``) the exporter gives them. Calibration ranges are computed once and cached.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner

from runtime.errors import OffsegError
from runtime.metrics import ConfusionMatrix

from .files import model_info
from .quantize import QuantOptions, quantize_file


def group_of(node_name: str, depth: int = 3) -> str:
    scope = node_name.split("/")[0] if "/" in node_name else "other"
    return ".".join(scope.split(".")[:depth])


def conv_groups(model: onnx.ModelProto, depth: int = 3) -> dict[str, list[str]]:
    """Conv node names by the module (scope prefix of ``depth`` parts) they belong to."""
    flat = onnx.inliner.inline_local_functions(model) if model.functions else model
    groups: dict[str, list[str]] = {}
    for node in flat.graph.node:
        if node.op_type == "Conv":
            groups.setdefault(group_of(node.name, depth), []).append(node.name)
    return groups


@dataclass(frozen=True)
class Sensitivity:
    group: str
    layers: int
    miou: float  # mIoU (%) of the model with only this group in INT8, against the FP32 labels

    @property
    def cost(self) -> float:
        return 100.0 - self.miou


def labels_of(path: Path, inputs: list[np.ndarray], info) -> list[np.ndarray]:
    """(H, W) label maps of an ONNX model on ``inputs``, whatever its output kind and layout (``info``: ModelInfo)."""
    from runtime.backends.ort_backend import inference_session
    session = inference_session(path, ["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [info.planar(session.run(None, {name: x})[0])[0] for x in inputs]
    return [out if info.output_kind == "labels" else out.argmax(axis=0) for out in outputs]


def sweep(source: Path, calib_data, val_inputs: list[np.ndarray], options: QuantOptions, depth: int = 3,
          progress: bool = True) -> list[Sensitivity]:
    """Per-group INT8 sensitivity, worst first (``depth``: how many name parts make a group)."""
    from runtime.progress import progress as report_progress

    model = onnx.load(str(source))
    info = model_info(model, source)
    groups = conv_groups(model, depth)
    reference = labels_of(source, val_inputs, info)
    results = []
    with tempfile.TemporaryDirectory(prefix="offseg-sensitivity-") as folder:
        cache = options.cache or Path(folder) / "ranges"
        for name in report_progress(groups, "INT8 sensitivity", unit="group", enabled=progress):
            others = tuple(n for g, nodes in groups.items() if g != name for n in nodes)
            path = Path(folder) / "one.onnx"
            quantize_file(source, path, calib_data, replace(options, extra_exclude_nodes=others, cache=cache))
            confusion = ConfusionMatrix(info.num_classes)
            try:
                labels = labels_of(path, val_inputs, info)
            except Exception as error:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
                raise OffsegError(f"ONNX Runtime cannot run {source.name} with only {name} in INT8: "
                                  f"{str(error).splitlines()[0][:300]}") from None
            for predicted, expected in zip(labels, reference):
                confusion.update(predicted, expected)
            results.append(Sensitivity(name, len(groups[name]), 100 * confusion.scores().miou))
    return sorted(results, key=lambda s: s.miou)


def worst_layers(results: list[Sensitivity], model: onnx.ModelProto, count: int, depth: int = 3) -> tuple[str, ...]:
    """Node names of the ``count`` most costly groups (to keep them out of INT8)."""
    groups = conv_groups(model, depth)
    return tuple(n for s in results[:count] for n in groups[s.group])
