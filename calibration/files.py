"""Exported ONNX files on disk: metadata, checked atomic saves, hashes, the FP16 version (no torch needed)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
import onnx.inliner

from runtime.errors import OffsegError
from runtime.sinks import write_file

from .graph import extract_function
from .precision import DEFAULT_PINS, HEAD_SCOPE, PinRule, to_fp16

FUNCTION_DOMAIN = "offseg"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_onnx_name(path: Path, what: str = "ONNX file") -> None:
    """OffsegError unless the ``--output`` ``path`` ends in .onnx, the suffix a model's kind is told by."""
    if path.suffix.lower() != ".onnx":
        raise OffsegError(f"--output {path}: name the {what} NAME.onnx (offseg-run, TensorRT and ONNX Runtime's tools "
                          "tell a model's kind by its suffix)")


def load_onnx(path: str | os.PathLike):
    """An offseg-exported ONNX model, or OffsegError for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise OffsegError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError and others for corrupt files
        raise OffsegError(f"{path} is not a readable ONNX model ({type(error).__name__})") from None
    if "offseg.model" not in read_metadata(model):
        raise OffsegError(f"{path} was not exported by offseg-export (no offseg.* metadata); export it with "
                          "offseg-export so class count, input format and normalization are known")
    return model


def read_metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def graph_shape(value) -> list[int | None]:
    """The dims of an ONNX graph input or output (None where symbolic)."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def model_info(model, source: str | os.PathLike):
    """The runtime's ModelInfo of an exported ONNX model: its metadata, checked against its graph (input format
    and layout say what calibration images must become)."""
    from runtime.backends import ModelInfo

    info = ModelInfo.from_metadata(read_metadata(model), str(source))
    info.check_graph(graph_shape(model.graph.input[0]), graph_shape(model.graph.output[0]), str(source))
    return info


def save_checked(proto, meta: dict[str, str], path: Path) -> None:
    """Set the metadata, run the full ONNX checker and write atomically."""
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    write_file(path, proto.SerializeToString())


def derive_fp16(source: Path, path: Path, pins: tuple[PinRule, ...] = DEFAULT_PINS) -> dict[str, str]:
    """Write the FP16 (AutoCast) version of an exported ONNX file; the pinned nodes stay FP32. Returns metadata."""
    model = load_onnx(source)
    meta = read_metadata(model)
    if meta.get("offseg.precision", "fp32") != "fp32":
        raise OffsegError(f"{source} is already {meta['offseg.precision']}; give the FP32 export")
    has_function = any(f.name == HEAD_SCOPE for f in model.functions)
    proto = to_fp16(onnx.inliner.inline_local_functions(model) if has_function else model, pins)
    if has_function:
        proto = extract_function(proto, HEAD_SCOPE, FUNCTION_DOMAIN)
    meta = {**meta, "offseg.precision": "fp16", "offseg.fp32_pins": " ".join(map(str, pins)),
            "offseg.source_onnx_sha256": file_sha256(source)}
    save_checked(proto, meta, path)
    return meta


def is_derived_from(path: Path, source: Path, expected: dict[str, str]) -> bool:
    """True when ``path`` exists, was made from the current ``source`` and its metadata has ``expected`` values."""
    if not path.is_file():
        return False
    try:
        meta = read_metadata(onnx.load(str(path), load_external_data=False))
    except Exception:  # a corrupt leftover is simply rebuilt
        return False
    wanted = {"offseg.source_onnx_sha256": file_sha256(source), **expected}
    return all(meta.get(key) == value for key, value in wanted.items())
