"""The JSON sidecar of a TensorRT engine (``model.plan`` -> ``model.plan.json``) and the checks made before use.

A serialized engine only runs with the exact TensorRT version (unless built version-compatible) and the GPU family
it was built for; deserializing it elsewhere fails deep inside TensorRT. The sidecar records what the engine is
(model, classes, input, normalization, precision, pins) and where it was built, so the runtime can refuse a
mismatch with a sentence instead of a crash.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import OffsegError
from .sinks import write_file

SIDECAR_FORMAT = "offseg-engine/1"
SIDECAR_TYPES = {"num_classes": int, "onnx": dict, "tensorrt": dict, "gpu": (dict, type(None)), "precision": str,
                 "dla_core": (int, type(None))}
TENSORRT_TYPES = {"module": str, "version": str, "version_compatible": bool, "hardware_compatibility": str}


def sidecar_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: str | os.PathLike, info: dict) -> Path:
    path = sidecar_path(engine)
    write_file(path, json.dumps({"format": SIDECAR_FORMAT, **info}, indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(engine: str | os.PathLike) -> dict:
    path = sidecar_path(engine)
    if not path.is_file():
        raise OffsegError(f"{engine} has no sidecar {path.name}: rebuild it with offseg-export, which writes one")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deeply to be a sidecar
        raise OffsegError(f"cannot read {path}: {error}") from None
    if not isinstance(info, dict):
        raise OffsegError(f"{path} is not a JSON object, so not an offseg engine sidecar")
    if info.get("format") != SIDECAR_FORMAT:
        raise OffsegError(f"{path} is not an offseg engine sidecar (format {info.get('format')!r})")
    wrong = _wrong_types(info, SIDECAR_TYPES, "")
    if isinstance(info.get("tensorrt"), dict):
        wrong += _wrong_types(info["tensorrt"], TENSORRT_TYPES, "tensorrt.")
    if wrong:
        raise OffsegError(f"{path} is a damaged offseg engine sidecar: wrong type of {', '.join(wrong)}; rebuild "
                          "the engine with offseg-export")
    if info.get("dla_core") is not None and info["dla_core"] < 0:
        raise OffsegError(f"{path} is a damaged offseg engine sidecar: dla_core {info['dla_core']} is not a DLA core "
                          "(0 or more, or null for the GPU); rebuild the engine with offseg-export")
    return info


def _wrong_types(fields: dict, types: dict, prefix: str) -> list[str]:
    """``key (type)`` for each field of ``fields`` that ``types`` gives another type (a bool is no number)."""
    return [f"{prefix}{key} ({type(fields[key]).__name__})" for key, kinds in types.items() if key in fields and (
        not isinstance(fields[key], kinds) or (isinstance(fields[key], bool) and kinds is not bool))]


def describe_build(info: dict) -> str:
    """``built by TensorRT 10.3.0 for Orin (compute capability 8.7)``: which builder made an engine, and where."""
    built = info.get("tensorrt", {})
    module = {"tensorrt_rtx": "TensorRT-RTX"}.get(built.get("module"), "TensorRT")
    gpu = info.get("gpu")
    where = (f"for {gpu.get('name')} (compute capability {gpu.get('compute_capability')})" if gpu
             else "on a machine without a GPU")
    return f"built by {module} {built.get('version')} {where}"


def compatibility_problems(info: dict, tensorrt_version: str, device: dict | None,
                           num_classes: int | None = None) -> list[str]:
    """Why an engine described by ``info`` cannot run here (empty list: it can)."""
    problems = []
    built = info.get("tensorrt", {})
    if built.get("module", "tensorrt") != "tensorrt":
        problems.append(f"it was built with {built.get('module')}, which needs its own runtime")
    elif not built.get("version_compatible") and built.get("version") != tensorrt_version:
        # TensorRT loads a plan only in the exact version that built it (patch and build number included).
        problems.append(f"it was built with TensorRT {built.get('version')}, this is TensorRT {tensorrt_version} "
                        "(rebuild here, or build with --version-compatible)")
    gpu = info.get("gpu")
    if device is None:
        problems.append("no CUDA GPU is available here")
    elif gpu and built.get("hardware_compatibility", "NONE") == "NONE" and \
            gpu.get("compute_capability") != device.get("compute_capability"):
        problems.append(f"it was built for {gpu.get('name')} (compute capability {gpu.get('compute_capability')}), "
                        f"this GPU is {device.get('name')} ({device.get('compute_capability')})")
    if num_classes is not None and info.get("num_classes") != num_classes:
        problems.append(f"it predicts {info.get('num_classes')} classes, {num_classes} were asked for")
    return problems


def check_engine(engine: str | os.PathLike, tensorrt_version: str, device: dict | None,
                 num_classes: int | None = None) -> dict:
    """The sidecar of ``engine`` if it can run here; else OffsegError listing every reason."""
    info = read_sidecar(engine)
    problems = compatibility_problems(info, tensorrt_version, device, num_classes)
    if problems:
        raise OffsegError(f"cannot run {engine}: " + "; ".join(problems))
    return info

