"""What a model file is (``offseg-info FILE``): a checkpoint, an exported ONNX model or a TensorRT engine, read
through the same checked loaders as the commands that use it; nothing is run."""
from __future__ import annotations

import os
from pathlib import Path

from runtime.backends import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES, ModelInfo, package_models
from runtime.errors import OffsegError
from runtime.progress import counted

SHOWN_CLASSES = 12  # names listed before "... and N more"


def describe_file(path: str | os.PathLike) -> list[str]:
    """Lines saying what ``path`` holds and how to use it; OffsegError for what no offseg command reads."""
    path = Path(path)
    if path.is_dir():
        return _package(path)
    if not path.exists():
        raise OffsegError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx(path)
    if suffix in ENGINE_SUFFIXES:
        return _engine(path)
    if suffix in CHECKPOINT_SUFFIXES:
        return _checkpoint(path)
    raise OffsegError(f"cannot tell what {path.name} is from its suffix: offseg-info describes .pth checkpoints, .onnx "
                      "models and .plan engines")


def _package(folder: Path) -> list[str]:
    """An offseg-export package folder: what it is, then each model file in it, described."""
    package = package_models(folder)
    if package is None:
        raise OffsegError(f"{folder} is a folder, not a model file: give a .pth, .onnx or .plan file (or a Triton "
                          "repository or DeepStream package folder from offseg-export)")
    kind, models = package
    use = (f"serve it: tritonserver --model-repository {folder}, then offseg-run --triton http://HOST:8000"
           if kind == "Triton model repository" else f"on the device: cd {folder} && sh pipeline.sh VIDEO.mp4")
    lines = [f"{folder}: {kind} holding {counted(len(models), 'model')}; {use}"]
    for model in models:
        lines += describe_file(model)
    return lines


def _rows(pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(key) for key, _ in pairs)
    return [f"  {key:<{width}}  {value}" for key, value in pairs]


def _class_list(names: tuple[str, ...] | list[str] | None, count: int) -> str:
    if not names:
        return f"{counted(count, 'class')}, no names (numbered 0-{count - 1})"
    shown = ", ".join(names[:SHOWN_CLASSES])
    return shown + (f" ... and {len(names) - SHOWN_CLASSES} more" if len(names) > SHOWN_CLASSES else "")


def _file_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size:,} bytes"


def _hw(size: list) -> str:
    return "x".join(map(str, size))


def _model_rows(info: ModelInfo, meta: dict, batch: str, sizes: str = "any height and width (dynamic)"
                ) -> list[tuple[str, str]]:
    """The rows an ONNX model and an engine share, from the exporter's metadata (``offseg.`` prefix or none)."""
    def value(key: str, default: str = "") -> str:
        return str(meta.get(f"offseg.{key}", meta.get(key, default)))

    checkpoint = value("checkpoint_sha256")
    weights = ("RANDOM: exported without a checkpoint (for speed tests only; its labels are noise)" if not info.trained
               else f"trained (checkpoint sha256 {checkpoint[:16]}...)" if checkpoint else "trained")
    size = sizes if info.input_size is None else "%dx%d" % info.input_size
    normalization = (f" (mean {value('mean_rgb')}, std {value('std_rgb')})"
                     if info.input_format == "normalized" and value("mean_rgb") else "")
    shape = f"{info.output_kind} {info.output_shape(str(info.num_classes))}"
    rows = [("classes", _class_list(info.classes, info.num_classes)), ("weights", weights),
            ("input", f"{batch}, {size}, {value('input_format')}{normalization}"), ("output", shape)]
    if value("int8_method"):
        images = value("int8_images")
        rows.append(("int8", f"Q/DQ for {value('int8_target')}, {value('int8_method')} calibration on "
                             f"{counted(int(images), 'image') if images.isdigit() else images} of "
                             f"{value('int8_data')}"))
    return rows


def _onnx(path: Path) -> list[str]:
    from calibration.files import graph_shape, load_onnx, model_info, read_metadata

    model = load_onnx(path)
    meta = read_metadata(model)
    info = model_info(model, path)
    batch_dim = graph_shape(model.graph.input[0])[0]
    batch = f"batch {batch_dim}" if batch_dim else "any batch (dynamic)"
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    head = (f"{path}: ONNX model of {info.name}, {counted(info.num_classes, 'class')}, {info.precision}; exported by "
            f"offseg-export {meta.get('offseg.version', '?')} (opset {opsets.get('ai.onnx', '?')}), "
            f"{_file_size(path)}")
    rows = _model_rows(info, meta, batch)
    rows.append(("run", f"offseg-run --engine {path} --video IN.mp4 --output OUT.mp4"))
    if info.precision == "fp32":
        rows.append(("engine", f"on the device: offseg-export --onnx {path} --format engine --fp16"))
    elif meta.get("offseg.int8_target", "tensorrt") == "tensorrt":  # an FP16 or a TensorRT Q/DQ graph: as it is
        rows.append(("engine", f"on the device: offseg-export --onnx {path} --format engine (an "
                                 f"{info.precision.upper()} engine, as the file is)"))
    return [head, *_rows(rows)]


def _engine(path: Path) -> list[str]:
    from runtime.engine_meta import describe_build, read_sidecar

    sidecar = read_sidecar(path)
    meta = sidecar.get("onnx") or {}
    info = ModelInfo.from_metadata(meta, f"{path}'s sidecar")
    build = sidecar.get("build") if isinstance(sidecar.get("build"), dict) else {}
    most = build.get("max_batch") if isinstance(build.get("max_batch"), int) else 1
    batch = f"batch 1-{most} (profile)" if most > 1 else "batch 1"
    shapes = build.get("profile_shapes")
    sizes = "any height and width"
    if isinstance(shapes, list) and len(shapes) == 3 and all(  # (min, opt, max) of (H, W); the sidecar is untrusted
            isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) for v in shape) for shape in shapes):
        sizes = f"{_hw(shapes[0])} to {_hw(shapes[2])} (profile, tuned for {_hw(shapes[1])})"
    where = f" on DLA core {sidecar['dla_core']}" if sidecar.get("dla_core") is not None else ""
    head = (f"{path}: TensorRT engine of {info.name}, {counted(info.num_classes, 'class')}, {sidecar.get('precision')}"
            f"{where}; {describe_build(sidecar)}, {_file_size(path)}")
    rows = _model_rows(info, meta, batch, sizes)
    if meta.get("file_sha256"):
        rows.append(("from ONNX", f"sha256 {str(meta['file_sha256'])[:16]}..."))
    rows.append(("here", _engine_here(sidecar)))
    return [head, *_rows(rows)]


def _engine_here(sidecar: dict) -> str:
    """Whether this machine can run the engine, and if not why."""
    from runtime.device import cuda_device, module_installed
    from runtime.engine_meta import compatibility_problems

    if not module_installed("tensorrt"):
        return "this machine has no TensorRT: run the engine on the device it was built for"
    import tensorrt

    device = cuda_device()
    problems = compatibility_problems(sidecar, tensorrt.__version__, device.as_dict() if device else None)
    return "runs here (TensorRT and GPU match)" if not problems else "cannot run here: " + "; ".join(problems)


def _checkpoint(path: Path) -> list[str]:
    from offseg.checkpoint import (FORMAT, TRAINING_KEYS, checkpoint_labels, checkpoint_model_name,
                                   checkpoint_num_classes, extract_state_dict, read_file)

    content = read_file(path)
    state = extract_state_dict(content)
    classes = checkpoint_num_classes(state)
    name = checkpoint_model_name(content, state)
    names, palette = checkpoint_labels(content, classes, f"checkpoint {path}")
    meta = content.get("meta") if isinstance(content.get("meta"), dict) else {}
    ours = content.get("format") == FORMAT
    kind = ("offseg-train training checkpoint (resumable)" if ours and all(key in content for key in TRAINING_KEYS)
            else "offseg checkpoint" if ours else "mmseg checkpoint (official format)")
    parameters = sum(tensor.numel() for tensor in state.values() if tensor.is_floating_point())
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in state.values()
                     if tensor.is_floating_point()})
    head = f"{path}: {kind} of {name}, {counted(classes, 'class')}, {_file_size(path)}"
    rows = [("classes", _class_list(names, classes) + ("; with colours" if palette else "")),
            ("weights", f"{parameters / 1e6:.2f} M values, {', '.join(dtypes)} (parameters and BatchNorm statistics)")]
    rows += _training_rows(content, meta)
    rows.append(("export", f"offseg-export --checkpoint {path} --output {path.with_suffix('.onnx').name}"))
    return [head, *_rows(rows)]


def _training_rows(content: dict, meta: dict) -> list[tuple[str, str]]:
    """Where the weights came from: the run's length and data, and the mIoU it recorded, when the file says."""
    config = content.get("config") if isinstance(content.get("config"), dict) else {}
    iteration = content.get("iteration", meta.get("iteration"))
    dataset = config.get("dataset", meta.get("dataset"))
    rows = []
    if isinstance(iteration, int):
        total = config.get("iters")
        done = f"{iteration:,} of {total:,}" if isinstance(total, int) else f"{iteration:,}"
        rows.append(("trained", f"{done} iterations" + (f" on {dataset}" if isinstance(dataset, str) else "")))
    miou = meta.get("miou")
    if isinstance(miou, float):
        rows.append(("mIoU", f"{100 * miou:.2f} (recorded by offseg-train on its validation images)"))
    return rows
