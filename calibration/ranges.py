"""The calibration ranges cache (``offseg-calibrate --cache``): ONNX Runtime's ranges file with a record of what
the ranges were computed for (the FP32 source file, method, calibrated op types, input size, calibration images). A
cache is reused only
when that record matches and its ranges have ONNX Runtime's shape; anything else is one sentence, never a silent
reuse or a traceback from deep inside the quantizer."""
from __future__ import annotations

import json
from pathlib import Path

from runtime.errors import OffsegError
from runtime.sinks import write_file

from .files import file_sha256

CACHE_FORMAT = "offseg-calibration-ranges/1"
RANGE_FIELDS = {"avg", "std", "lowest", "highest", "hist", "hist_edges", "bins", "CLS"}  # ORT's TensorData


def ranges_key(source: Path, method: str, op_types: tuple[str, ...], input_size: tuple[int, int],
               images: str) -> dict:
    """What a cache records and must match: the ranges of ``source`` (by content) for this calibration (``images``:
    ``sources.data_key`` of the calibration images)."""
    return {"format": CACHE_FORMAT, "source_onnx_sha256": file_sha256(source), "method": method,
            "op_types": list(op_types), "input_size": list(input_size), "images": images}


def write_ranges(ort_ranges: Path, cache: Path, key: dict) -> None:
    """ONNX Runtime's ranges file ``ort_ranges`` with ``key`` added (ONNX Runtime ignores it), written to ``cache``
    (atomically, as every write)."""
    content = json.loads(ort_ranges.read_text())
    write_file(cache, json.dumps({**content, "offseg": key}))


def check_ranges(cache: Path, key: dict) -> None:
    """OffsegError unless ``cache`` holds ranges of ``key``'s model and calibration, in ONNX Runtime's layout."""
    redo = "delete it (or name another --cache) to calibrate anew"
    try:
        content = json.loads(Path(cache).read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise OffsegError(f"calibration cache {cache} is not a ranges file of offseg-calibrate ({error}): {redo}") \
            from None
    recorded = content.get("offseg") if isinstance(content, dict) else None
    if not isinstance(recorded, dict) or recorded.get("format") != CACHE_FORMAT:
        raise OffsegError(f"calibration cache {cache} was not written by offseg-calibrate (it does not say which "
                          f"model and method its ranges are for): {redo}")
    if recorded.get("source_onnx_sha256") != key["source_onnx_sha256"]:
        raise OffsegError(f"calibration cache {cache} holds the ranges of another model (not of this ONNX file, "
                          f"sha256 {key['source_onnx_sha256'][:12]}...): {redo}")
    for field, what in (("method", "calibration method"), ("op_types", "calibrated op types"),
                        ("input_size", "input size")):
        if recorded.get(field) != key[field]:
            raise OffsegError(f"calibration cache {cache} was made with {what} {_shown(recorded.get(field))}, this "
                              f"calibration uses {_shown(key[field])}: {redo}")
    if recorded.get("images") != key["images"]:
        raise OffsegError(f"calibration cache {cache} was made from other calibration images (another --calib-data "
                          f"or --calib-images, or the files changed since): {redo}")
    data = content.get("data")
    if not isinstance(data, dict) or not data or not all(
            isinstance(name, str) and isinstance(ranges, dict) and set(ranges) <= RANGE_FIELDS
            for name, ranges in data.items()):
        raise OffsegError(f"calibration cache {cache} is damaged (no ranges per tensor in ONNX Runtime's layout): "
                          f"{redo}")
    try:
        from onnxruntime.quantization.calibrate import load_tensors_data
        load_tensors_data(cache)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise OffsegError(f"calibration cache {cache} is damaged ({error}): {redo}") from None


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
