"""``offseg-export``: an OffSeg model (checkpoint or fresh weights) to ONNX, FP16 / INT8 ONNX and TensorRT engines.

Artifacts share the output's stem: ``NAME.onnx`` (FP32), ``NAME.fp16.onnx`` (AutoCast, FP32 pins),
``NAME.int8.onnx`` (Q/DQ for TensorRT), ``NAME.<precision>.plan`` + ``.plan.json``. A workstation without
TensorRT writes the ONNX files and says how to build on the device (``--onnx NAME.onnx --format engine``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runtime.backends import LABEL_DTYPES, LAYOUTS, OUTPUT_KINDS
from runtime.console import add_common_options, add_hidden_aliases, given, run
from runtime.device import module_installed
from runtime.errors import OffsegError
from runtime.limits import check_at_least
from runtime.output_policy import Output, add_input, add_output
from runtime.preprocess import INPUT_FORMATS, INPUT_LAYOUTS

from offseg.names import FREQFUSION_CHOICES, MODEL_NAMES, freqfusion_form_for

from .opsets import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

BUILD_ONLY = ("workspace", "dla_core", "opt_level", "timing_cache", "version_compatible", "hardware_compatible", "tf32",
              "min_size", "opt_size", "max_size", "trt_module")  # destinations of the TensorRT builder's options
TRACE_ONLY = ("num_classes", "input_size", "dynamic", "opset", "input_format", "input_layout", "output_kind",
              "label_dtype", "layout", "inline_head", "unfused_head", "freqfusion_form", "no_check")  # of the tracing
PROFILE = ("max_batch", "min_size", "opt_size", "max_size")  # a dynamic model's optimization profile


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _report_support(path: Path) -> None:
    """Say whether TensorRT 10's ONNX parser takes every op of ``path`` (a warning, not an error)."""
    from calibration.files import load_onnx
    from calibration.trt_support import unsupported

    problems = unsupported(load_onnx(path))
    print(f"  TensorRT 10 ONNX parser: {'all ops supported' if not problems else 'WARNING ' + '; '.join(problems)}")


def _shown(args: argparse.Namespace, path: Path) -> Path:
    """``path`` as the user will find it: a file of a package folder being written (``args.staged``, the temporary
    folder and the output) at its place in the output."""
    staged = getattr(args, "staged", None)
    return staged[1] / path.relative_to(staged[0]) if staged and path.is_relative_to(staged[0]) else path


def _checkpoint_content(args: argparse.Namespace) -> dict:
    """--checkpoint as ``read_file`` returns it, read once per run and kept on ``args`` until the model is built
    (the output names need its model name before the export starts)."""
    from offseg.checkpoint import read_file

    if getattr(args, "checkpoint_read", None) is None:
        args.checkpoint_read = read_file(args.checkpoint)
    return args.checkpoint_read


def _checkpoint_model(args: argparse.Namespace) -> str | None:
    """The model --checkpoint was made for; None when it cannot be read or told, which the export itself then
    says, after the output policy has checked the paths."""
    from offseg.checkpoint import checkpoint_model_name, extract_state_dict

    try:
        content = _checkpoint_content(args)
        return checkpoint_model_name(content, extract_state_dict(content))
    except OffsegError:
        return None


def _loaded_onnx(args: argparse.Namespace):
    """The --onnx file's graph and offseg metadata, read once per run and kept on ``args``: the engine's name needs
    its precision before the export starts, which uses the graph."""
    from calibration.files import load_onnx, read_metadata

    if getattr(args, "onnx_loaded", None) is None:
        graph = load_onnx(args.onnx)
        args.onnx_loaded = (graph, read_metadata(graph))
    return args.onnx_loaded


def _source_precision(args: argparse.Namespace) -> str:
    """The precision of the graph an engine is built from as given: an FP16 or INT8 (Q/DQ) --onnx file keeps its
    own; fp32 for the FP32 export, which --fp16 / --int8 derive from, and for a file that cannot be read (the
    export says why, after the output policy has checked the paths)."""
    if not (args.onnx and args.format == "engine"):
        return "fp32"
    try:
        return _loaded_onnx(args)[1].get("offseg.precision", "fp32")
    except OffsegError:
        return "fp32"


def _model_name(args: argparse.Namespace) -> str:
    """The name default file and folder names take: --model, else --checkpoint's model, else offseg-t."""
    return args.model or (args.checkpoint and _checkpoint_model(args)) or "offseg-t"


def _torch_model(args: argparse.Namespace):
    """The model to export, its name and its label metadata (the checkpoint's classes and palette): from
    --checkpoint, else fresh weights (with a warning). The checkpoint's content is let go once the model is built:
    the export does not hold a second copy of the weights."""
    from offseg import build_model
    from offseg.checkpoint import build_from_checkpoint

    from .onnx import label_metadata

    if args.checkpoint:
        content = _checkpoint_content(args)
        args.checkpoint_read = None
        model, name = build_from_checkpoint(args.checkpoint, args.model, content=content)
        if args.num_classes is not None and args.num_classes != model.num_classes:
            raise OffsegError(f"--num-classes {args.num_classes} does not match the checkpoint "
                              f"({model.num_classes} classes); drop the option or use another checkpoint")
        return model, name, label_metadata(model.num_classes, args.checkpoint, content)
    name = args.model or "offseg-t"
    print(f"WARNING: no --checkpoint given: exporting {name} with RANDOM, UNTRAINED weights. Its predictions "
          "are noise; the files are for speed tests only (the metadata says so too). Pass --checkpoint PATH "
          "for a real model.", file=sys.stderr, flush=True)
    model = build_model(name, 150 if args.num_classes is None else args.num_classes).eval()
    return model, name, label_metadata(model.num_classes, None)


def _export_torch(args: argparse.Namespace, model, name: str, labels: dict[str, str], onnx_path: Path) \
        -> dict[str, str]:
    """PyTorch -> ONNX (``labels``: its class names and palette), plus the parity check against PyTorch; returns
    the ONNX metadata."""
    from .onnx import OnnxOptions, export_onnx
    from .parity import onnx_parity

    options = OnnxOptions(input_size=tuple(args.input_size), dynamic=args.dynamic, opset=args.opset,
                          input_format=args.input_format, input_layout=args.input_layout,
                          output_kind=args.output_kind,
                          label_dtype=args.label_dtype, output_layout=args.layout,
                          fused_head=not args.unfused_head, head_as_function=not args.inline_head,
                          freqfusion_form=freqfusion_form_for(args.freqfusion_form, _target(args)))
    options.validate()
    start = time.perf_counter()
    result = export_onnx(model, name, onnx_path, options, args.checkpoint, labels)
    print(f"wrote {_shown(args, result.path)} ({_size(result.path)}) in {time.perf_counter() - start:.0f} s: input "
          f"'{result.input_name}' {result.metadata['offseg.input_format']} ({result.metadata['offseg.input_size']}),"
          f" output '{result.output_name}' ({options.output_kind}, {options.output_layout}), {model.num_classes} "
          f"classes, FreqFusion as "
          f"{options.freqfusion_form}")
    if not args.no_check:
        print(f"  parity vs PyTorch (ONNX Runtime CPU, {options.input_size[0]}x{options.input_size[1]}): "
              f"{onnx_parity(model, onnx_path, options)}")
    _report_support(onnx_path)
    return result.metadata


def _read_onnx_source(args: argparse.Namespace):
    """The --onnx file (checked: an offseg export), with its metadata; OffsegError beside --model/--checkpoint."""
    if args.checkpoint or args.model:
        raise OffsegError("--onnx builds from an exported file: drop --model/--checkpoint")
    graph, meta = _loaded_onnx(args)
    _check_profile(args, meta.get("offseg.input_size") == "dynamic", f"{args.onnx.name} (input "
                   f"{meta.get('offseg.input_size')})")
    return graph, meta


def _package_model(args: argparse.Namespace, place, check=None) -> tuple[dict[str, str], Path]:
    """The FP32 ONNX model of a --format deepstream / triton package, written where ``place(model name)`` says:
    exported from PyTorch, or the --onnx file copied in (once ``check(its metadata)`` passes); returns its
    metadata and path."""
    if not args.onnx:
        model, name, labels = _torch_model(args)
        path = place(name)
        return _export_torch(args, model, name, labels, path), path
    graph, meta = _read_onnx_source(args)
    precision = meta.get("offseg.precision", "fp32")
    if precision != "fp32":
        raise OffsegError(f"--onnx {args.onnx} is the {precision.upper()} model; a --format {args.format} package "
                          "starts from the FP32 ONNX file (its precision is chosen with --fp16 / --int8): give the "
                          "file it was made from")
    if check is not None:
        check(meta)
    path = place(meta["offseg.model"])
    path.write_bytes(graph.SerializeToString())  # external data, if any, now inside the package's one file
    print(f"copied {args.onnx} into the package ({meta.get('offseg.model')}, {meta.get('offseg.num_classes')} "
          f"classes, input {meta.get('offseg.input_size', '').replace(' ', 'x')}, {meta.get('offseg.input_format')})")
    return meta, path


def _target(args: argparse.Namespace) -> str:
    """What runs the export: ``engine`` for a TensorRT repository of --format triton, else the format."""
    return "engine" if args.format == "triton" and args.triton_backend == "tensorrt" else args.format


def _engine_options(args: argparse.Namespace):
    from calibration.precision import DEFAULT_PINS, PinRule
    from .tensorrt import EngineOptions

    pins = (() if args.no_default_pins else DEFAULT_PINS) + tuple(PinRule.parse(t) for t in args.keep_fp32)
    source = _source_precision(args)
    options = EngineOptions(fp16=args.fp16 or source == "fp16", int8=args.int8 or source == "int8",
                            workspace_mib=args.workspace, dla_core=args.dla_core,
                            optimization_level=args.opt_level, timing_cache=args.timing_cache,
                            version_compatible=args.version_compatible, hardware_compatible=args.hardware_compatible,
                            tf32=args.tf32, max_batch=args.max_batch, pins=pins,
                            shapes=(tuple(args.min_size), tuple(args.opt_size), tuple(args.max_size)))
    options.validate()
    return options


def _fp16_onnx(args: argparse.Namespace, fp32_path: Path, path: Path, pins) -> None:
    from calibration.files import derive_fp16, is_derived_from

    pin_text = " ".join(map(str, pins))
    if is_derived_from(path, fp32_path, {"offseg.precision": "fp16", "offseg.fp32_pins": pin_text}):
        print(f"reusing {_shown(args, path)} (made from this {fp32_path.name} with the same pins)")
        return
    derive_fp16(fp32_path, path, pins)
    print(f"wrote {_shown(args, path)} ({_size(path)}): FP16, FP32 pins {pin_text or 'none'}")
    _report_support(path)


def _int8_onnx(args: argparse.Namespace, fp32_path: Path, path: Path, calib_key: str | None) -> None:
    from calibration.quantize import QuantOptions, quantize_unless_current

    stats = quantize_unless_current(fp32_path, path, args.calib_data,
                                    QuantOptions(target="tensorrt", samples=args.calib_images), calib_key)
    if stats is None:
        print(f"reusing {_shown(args, path)} (calibrated from this {fp32_path.name} on the same images)")
        return
    print(f"wrote {_shown(args, path)} ({_size(path)}): Q/DQ INT8 for TensorRT, {stats}")
    _report_support(path)


def _check_profile(args: argparse.Namespace, dynamic: bool, what: str) -> None:
    """OffsegError for optimization-profile options given for a static model (they would be ignored)."""
    profile = given(args, PROFILE)
    if profile and not dynamic:
        raise OffsegError(f"{', '.join(profile)} set{'' if len(profile) > 1 else 's'} the batch and sizes a dynamic "
                          f"model is built for, and {what} is static: export with --dynamic, or drop "
                          + ("them" if len(profile) > 1 else "it"))


def _check_unused_options(args: argparse.Namespace) -> None:
    """An option that the chosen output would ignore: one sentence naming it and what it applies to."""
    traced = given(args, TRACE_ONLY) if args.onnx else []
    if traced:
        raise OffsegError(f"{', '.join(traced)} appl{'y' if len(traced) > 1 else 'ies'} when exporting from PyTorch; "
                          f"the file given with --onnx keeps its own (its metadata says which): drop "
                          f"{'them' if len(traced) > 1 else 'it'}, or export anew from --checkpoint")
    derived = [flag for flag, wanted in (("--fp16", args.fp16), ("--int8", args.int8)) if wanted]
    if args.onnx and args.format == "onnx" and not derived:
        raise OffsegError(f"--onnx {args.onnx} with --format onnx (the default) has nothing to make: add --fp16 or "
                          "--int8 for its FP16 / INT8 version, or --format engine, deepstream or triton")
    if args.onnx and args.format == "onnx" and args.output and len(derived) > 1:
        stem = args.onnx.with_suffix("")
        raise OffsegError(f"--output names one file, and --fp16 --int8 make two ({stem}.fp16.onnx and "
                          f"{stem}.int8.onnx, named after --onnx): drop --output, or make one at a time")
    tensorrt = args.format == "engine" or (args.format == "triton" and args.triton_backend == "tensorrt")
    unused = [] if tensorrt else given(args, BUILD_ONLY)
    if unused:
        raise OffsegError(f"{', '.join(unused)} set{'' if len(unused) > 1 else 's'} how a TensorRT engine is built, "
                          f"and --format {args.format} builds none: add --format engine (or --format triton "
                          "--triton-backend tensorrt), or drop " + ("them" if len(unused) > 1 else "it"))
    if given(args, ("max_batch",)) and args.format not in ("engine", "triton"):
        raise OffsegError(f"--max-batch sets a TensorRT engine's or a Triton model's batch; --format {args.format} "
                          "takes none (an ONNX file's batch is fixed, or free with --dynamic): drop it")
    if not args.onnx:
        _check_profile(args, args.dynamic, "this export")
    source = _source_precision(args)
    if source == "fp16" and args.int8:
        raise OffsegError(f"--onnx {args.onnx} is the FP16 model, and --int8 calibrates the FP32 export: give the file "
                          "it was made from")
    if source == "int8" and _loaded_onnx(args)[1].get("offseg.int8_target") == "onnxruntime":
        raise OffsegError(f"--onnx {args.onnx} is quantized for ONNX Runtime (int32 biases through DequantizeLinear, "
                          "which TensorRT's ONNX parser rejects): quantize the FP32 export for TensorRT "
                          "(offseg-calibrate --target tensorrt, or offseg-export --int8)")
    if source == "int8" and args.calib_data is not None:
        raise OffsegError(f"--onnx {args.onnx} is already INT8 (calibrated Q/DQ), so its engine is built without "
                          "calibration images: drop --calib-data")
    pins = [flag for flag, value in (("--keep-fp32", args.keep_fp32), ("--no-default-pins", args.no_default_pins))
            if value]
    if pins and not (args.fp16 or args.int8 or source != "fp32"):
        raise OffsegError(f"{' and '.join(pins)} choose{'' if len(pins) > 1 else 's'} what stays FP32 in an --fp16 or "
                          "--int8 build, and this one is FP32 throughout: add --fp16 or --int8, or drop "
                          + ("them" if len(pins) > 1 else "it"))
    if pins and args.format == "deepstream":
        raise OffsegError(f"{' and '.join(pins)}: nvinfer builds a DeepStream package's engine itself, without pins; "
                          "build the engine with offseg-export --onnx MODEL.onnx --format engine --fp16 and the same "
                          "flags, and name it in the config's model-engine-file")
    if (args.calib_data is not None or given(args, ("calib_images",))) and not args.int8:
        raise OffsegError("--calib-data and --calib-images calibrate an --int8 build; add --int8, or drop them")
    if args.int8 and args.format == "deepstream":
        raise OffsegError("--format deepstream packages an FP32 or --fp16 model (nvinfer's network-mode 0 or 2); for "
                          "INT8 build an engine with --format engine --int8 and point the package's model-engine-file "
                          "at it")
    if (args.fp16 or args.int8) and args.format == "triton" and args.triton_backend != "tensorrt":
        raise OffsegError(f"--triton-backend {args.triton_backend} serves the FP32 ONNX model; for "
                          f"{'--fp16' if args.fp16 else '--int8'} use --triton-backend tensorrt (built on the GPU host "
                          "that serves it)")


def _check_inputs(args: argparse.Namespace) -> str | None:
    """The inputs, before minutes of export (the outputs were checked by ``output_policy``): one sentence for the
    first problem. Returns the calibration images' digest for ``--int8`` (``sources.data_key``), else None."""
    from calibration.sources import data_key

    calib_key = None
    if args.int8 and _source_precision(args) != "int8":
        if args.calib_data is None:
            raise OffsegError("--int8 needs calibration images: --calib-data DIR (a folder of images or a video), "
                              "or --calib-data synthetic")
        check_at_least(("--calib-images", args.calib_images, 1))
        calib_key = data_key(args.calib_data, args.calib_images)  # raises for a missing, empty or unreadable source
    for option in ("checkpoint", "onnx"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            raise OffsegError(f"--{option} {path} does not exist or is not a file")
    return calib_key


def _artifacts(args: argparse.Namespace) -> dict[str, Path]:
    """The files ``--format onnx`` / ``engine`` writes, by kind: fp32 (unless built ``--onnx``), fp16, int8
    (the ONNX files an engine of that precision is built from, or that ``--fp16``/``--int8`` ask for), engine and
    its sidecar."""
    from runtime.engine_meta import sidecar_path

    main = args.output or Path(f"{_model_name(args)}.{'onnx' if args.format == 'onnx' else 'plan'}")
    stem = args.onnx.with_suffix("") if args.onnx else main.with_suffix("")
    files = {} if args.onnx else {"fp32": main if args.format == "onnx" else stem.with_suffix(".onnx")}
    source = _source_precision(args)
    for kind, wanted in (("fp16", args.fp16 and not (args.format == "engine" and args.int8)), ("int8", args.int8)):
        if wanted and kind != source:
            files[kind] = stem.with_name(f"{stem.name}.{kind}.onnx")
    if stem.suffix == f".{source}":  # M.int8.onnx's engine: M.int8.plan
        stem = stem.with_suffix("")
    if args.onnx and args.format == "onnx" and args.output and len(files) == 1:  # --output names the one made
        files = {kind: args.output for kind in files}
    if args.format == "engine":
        precision = _engine_options(args).precision
        files["engine"] = args.output if args.output and args.output.suffix == ".plan" else \
            stem.with_name(f"{stem.name}.{precision.replace('+', '-')}.plan")
        files["sidecar"] = sidecar_path(files["engine"])
    return files


def _outputs(args: argparse.Namespace) -> list[Output]:
    """Every output of this export, for ``output_policy``: the folder of ``--format deepstream``/``triton`` (replaced
    whole), else the files of ``_artifacts`` and the timing cache."""
    if args.format in ("deepstream", "triton"):
        return [Output("--output", _package_folder(args), folder=True, replaced=True)]
    outputs = [Output("--output" if path == args.output else f"the {kind} file", path)
               for kind, path in _artifacts(args).items()]
    return outputs + ([Output("--timing-cache", args.timing_cache)] if args.timing_cache else [])


def _package_folder(args: argparse.Namespace) -> Path:
    if args.output or args.format != "deepstream":
        return args.output or Path("model_repository")
    return Path(f"{args.onnx.stem if args.onnx else _model_name(args)}-deepstream")


def _deepstream(args: argparse.Namespace) -> int:
    """``--format deepstream``: the ONNX model (exported, or --onnx) and the nvinfer package, written to a folder
    renamed when done."""
    from runtime.backends import ModelInfo
    from runtime.sinks import atomic_folder

    from .deepstream import check_model, write_package

    if not args.onnx:
        check_model(ModelInfo(_model_name(args), 1, tuple(args.input_size) if not args.dynamic else None,
                              args.input_format, args.output_kind, input_layout=args.input_layout))
    folder = _package_folder(args)
    with atomic_folder(folder) as tmp:
        args.staged = (tmp, folder)
        meta, onnx_path = _package_model(args, lambda name: tmp / f"{name}.onnx",
                                         check=lambda meta: check_model(ModelInfo.from_metadata(meta), args.onnx))
        written = write_package(tmp, ModelInfo.from_metadata(meta), onnx_path.name, args.fp16)
    print(f"wrote {folder}/: {onnx_path.name}, {', '.join(written)}; on the device: cd {folder} && sh pipeline.sh "
          "VIDEO.mp4")
    return 0


def _version_folder(repository: Path, name: str) -> Path:
    """A Triton repository's ``NAME/1/``, made."""
    version = repository / name / "1"
    version.mkdir(parents=True)
    return version


def _triton(args: argparse.Namespace) -> int:
    """``--format triton``: a model repository (``<model>/config.pbtxt``, ``<model>/1/`` with the file its
    ``--triton-backend`` loads), renamed into place when complete."""
    import shutil

    from calibration.files import load_onnx
    from calibration.precision import check_user_rules
    from runtime.sinks import atomic_folder

    from .triton import BACKENDS, config_text

    repository = _package_folder(args)
    backend = args.triton_backend
    if backend == "tensorrt" and not module_installed(args.trt_module or "tensorrt"):
        raise OffsegError("--triton-backend tensorrt builds the engine on this machine, and TensorRT is not installed "
                          "here: run this export on the GPU host that serves the repository (JetPack provides "
                          "TensorRT on a Jetson, pip install 'offseg-deploy[gpu]' on an x86 GPU machine), or use "
                          "--triton-backend onnxruntime")
    engine_options = _engine_options(args) if backend == "tensorrt" else None
    calib_key = _check_inputs(args)
    with atomic_folder(repository) as tmp:
        args.staged = (tmp, repository)
        meta, onnx_path = _package_model(args, lambda name: _version_folder(tmp, name) / "model.onnx")
        name, version = meta["offseg.model"], onnx_path.parent
        graph = load_onnx(onnx_path)
        check_user_rules(graph, args.keep_fp32, str(_shown(args, onnx_path)))
        if backend == "python":
            shutil.copyfile(Path(__file__).with_name("triton_python_model.py"), version / "model.py")
        if backend == "tensorrt":
            graphs = {kind: version / f"model.{kind}.onnx" for kind in ("fp16", "int8")}
            _build(args, engine_options, meta, onnx_path, {**graphs, "engine": version / "model.plan"}, calib_key)
            for intermediate in version.glob("*.onnx"):  # Triton loads model.plan; its sidecar stays beside it
                intermediate.unlink()
        (tmp / name / "config.pbtxt").write_text(config_text(name, graph, meta, args.max_batch, backend=backend))
    listing = ", ".join(f"{name}/{f}" for f in ["config.pbtxt", *sorted(
        str(p.relative_to(repository / name)) for p in (repository / name / "1").iterdir())])
    removed = "; the ONNX files the engine was built from were removed" if backend == "tensorrt" else ""
    print(f"wrote the Triton model repository {repository}/ ({listing}; {BACKENDS[backend][0]}{removed}); serve it "
          f"with: tritonserver --model-repository {repository}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from calibration.files import check_onnx_name, load_onnx
    from calibration.precision import check_user_rules

    check_at_least(("--num-classes", args.num_classes, 1))
    _check_unused_options(args)
    if args.triton_backend != "onnxruntime" and args.format != "triton":
        raise OffsegError(f"--triton-backend {args.triton_backend} chooses what serves a --format triton repository; "
                          "add --format triton")
    if args.format == "deepstream":
        args.input_format = args.input_format or "float-rgb-0-255"
        args.output_kind = args.output_kind or "probs"
        return _deepstream(args)
    args.input_format = args.input_format or "normalized"
    args.output_kind = args.output_kind or "logits"
    if args.format == "onnx" and args.output:
        check_onnx_name(args.output)
    if args.format == "triton":
        return _triton(args)
    engine_options = _engine_options(args)
    files = _artifacts(args)
    calib_key = _check_inputs(args)
    if args.onnx:
        fp32_path = args.onnx
        graph, meta = _read_onnx_source(args)
    else:
        fp32_path = files["fp32"]
        meta = _export_torch(args, *_torch_model(args), fp32_path)
        graph = load_onnx(fp32_path) if args.keep_fp32 else None
    if args.keep_fp32:
        check_user_rules(graph, args.keep_fp32, str(fp32_path))
    if args.format == "onnx":
        if args.fp16:
            _fp16_onnx(args, fp32_path, files["fp16"], engine_options.pins)
        if args.int8:
            _int8_onnx(args, fp32_path, files["int8"], calib_key)
        return 0
    return _build(args, engine_options, meta, fp32_path, files, calib_key)


def _build(args, engine_options, meta: dict[str, str], fp32_path: Path, files: dict[str, Path],
           calib_key: str | None) -> int:
    """Build ``files["engine"]`` from ``fp32_path`` (the FP32 export, or an --onnx file as given), through
    ``files["fp16"]`` or ``files["int8"]`` when the plan needs a graph of a precision that file does not have."""
    from calibration.files import load_onnx, read_metadata
    from calibration.precision import pinned_nodes
    from .tensorrt import TrtBuilder

    builder = TrtBuilder(args.trt_module)
    plan = builder.plan(engine_options, dynamic=meta.get("offseg.input_size") == "dynamic")
    source, given = fp32_path, _source_precision(args)
    if plan.onnx_precision == "fp16" and given != "fp16":
        source = files["fp16"]
        _fp16_onnx(args, fp32_path, source, engine_options.pins)
    elif plan.onnx_precision == "int8" and given != "int8":
        source = files["int8"]
        _int8_onnx(args, fp32_path, source, calib_key)
    engine = files["engine"]
    graph = _loaded_onnx(args)[0] if source == args.onnx else load_onnx(source)
    pins = pinned_nodes(graph, engine_options.pins) if plan.pin_layers else []
    print(f"building the {engine_options.precision} engine with {builder.caps.module} {builder.caps.version} "
          f"({'; '.join(plan.notes) or 'builder precision flags'}) ...")
    build = builder.build(source, engine, engine_options, plan, read_metadata(graph), pins)
    print(f"wrote {_shown(args, build.path)} ({_size(build.path)}) and {build.sidecar.name} in {build.seconds:.0f} s"
          + (f"; {len(build.pinned_layers)} layers pinned to FP32" if plan.pin_layers else ""))
    if builder.caps.module == "tensorrt_rtx":
        print("  note: a TensorRT-RTX engine runs only on an NVIDIA RTX GPU through TensorRT-RTX's own runtime "
              "(offseg-run does not drive it); for Jetson or TensorRT 10/11 hosts build on the device with "
              "--trt-module tensorrt")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-export", description="Export an OffSeg model to ONNX and "
                                     "TensorRT engines (FP32, FP16, INT8).")
    source = parser.add_argument_group("source")
    source.add_argument("--model", choices=MODEL_NAMES,
                        help="model name (default from the checkpoint, else offseg-t)")
    add_input(source, "--checkpoint", help="official mmseg or offseg checkpoint (default fresh weights)")
    source.add_argument("--num-classes", type=int, help="classes for fresh weights (default 150)")
    add_input(source, "--onnx", help="build from an ONNX file exported earlier (the device-side step)")
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=("onnx", "engine", "deepstream", "triton"), default="onnx",
                     help="onnx (default), engine: also build a TensorRT .plan, deepstream: a folder with the ONNX, "
                          "an nvinfer config (+ YAML), labels.txt and a gst-launch-1.0 pipeline, or triton: a Triton "
                          "model repository")
    add_output(out, "--output", help="main output (.onnx, .plan with --format engine, a new folder "
                     "with --format deepstream / triton; default ./<model>.onnx / .plan / <model>-deepstream / "
                     "model_repository); other files share its stem; with --onnx and --fp16 or --int8: that file "
                     "(default named after --onnx, M.fp16.onnx)")
    out.add_argument("--triton-backend", choices=("onnxruntime", "tensorrt", "python"), default="onnxruntime",
                     help="what serves a --format triton repository: onnxruntime (model.onnx), tensorrt (model.plan, "
                          "built here: needs TensorRT and this machine's GPU) or python (model.py running ONNX "
                          "Runtime on model.onnx, for servers with the Python backend only; default onnxruntime)")
    out.add_argument("--fp16", action="store_true", help="FP16 (ONNX: NAME.fp16.onnx; engine: FP16 engine)")
    out.add_argument("--int8", action="store_true", help="INT8 from a Q/DQ graph calibrated on --calib-data")
    add_input(out, "--calib-data", type=str, help="calibration images: folder, video file, or 'synthetic'")
    out.add_argument("--calib-images", type=int, default=64, help="calibration images to use (default 64)")
    onnx_group = parser.add_argument_group("ONNX")
    onnx_group.add_argument("--input-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                            help="input size, multiples of 32 (default 512 512; the example size with --dynamic)")
    onnx_group.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    onnx_group.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                            help=f"ONNX opset (default {DEFAULT_OPSET}; {MIN_OPSET}-{MAX_OPSET})")
    onnx_group.add_argument("--input-format", choices=tuple(INPUT_FORMATS),
                            help="normalized: float32 mean/std-normalized RGB NCHW; uint8-rgb: uint8 RGB NCHW, or "
                                 "float-rgb-0-255: float32 RGB pixels 0-255 NCHW (what DeepStream's nvinfer feeds), "
                                 "both with mean/std inside the graph (default normalized; float-rgb-0-255 for "
                                 "--format deepstream)")
    onnx_group.add_argument("--input-layout", choices=INPUT_LAYOUTS, default="nchw",
                            help="input layout: nchw (N, 3, H, W), or nhwc (N, H, W, 3): frames as cameras and "
                                 "decoders give them, transposed by the graph's first node (default nchw)")
    onnx_group.add_argument("--fold-normalization", action="store_const", const="uint8-rgb", dest="input_format",
                            help=argparse.SUPPRESS)  # the earlier name of --input-format uint8-rgb
    onnx_group.add_argument("--output-kind", choices=OUTPUT_KINDS,
                            help="logits (N, K, H/4, W/4), probs (their softmax, same shape) or labels (N, H, W) "
                                 "resized and argmaxed in the graph (default logits; probs for --format deepstream)")
    onnx_group.add_argument("--label-dtype", choices=("auto", *LABEL_DTYPES), default="auto",
                            help="dtype of a labels output: uint8, int32 (what TAO, Isaac ROS and DeepStream's "
                                 "tensor consumers read) or auto: uint8 when the classes fit")
    onnx_group.add_argument("--layout", choices=LAYOUTS, default="nchw",
                            help="output layout: nchw, or nhwc (N, h, w, K) scores / (N, H, W, 1) labels")
    onnx_group.add_argument("--inline-head", action="store_true",
                            help="keep the offset-learning nodes inline (names under OffsetLearning/) instead of a "
                                 "local function, for tools that cannot take ONNX functions")
    onnx_group.add_argument("--unfused-head", action="store_true",
                            help="export the paper's unfused offset learning (for comparisons)")
    onnx_group.add_argument("--freqfusion-form", choices=FREQFUSION_CHOICES, default="auto",
                            help="FreqFusion as a few Gather/MatMul ops (gather: fastest on ONNX Runtime and OpenVINO) "
                                 "or per-tap ops with GridSample (taps: what TensorRT fuses); auto (default): gather "
                                 "for --format onnx, taps for --format engine; recorded in the metadata and sidecar")
    onnx_group.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    trt = parser.add_argument_group("TensorRT engine")
    trt.add_argument("--workspace", type=int, metavar="MiB", help="builder workspace limit (Jetson: keep it small)")
    trt.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson, TensorRT 10), GPU fallback on")
    trt.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0-5 (default 3)")
    add_output(trt, "--timing-cache", help="timing cache file, reused and updated")
    trt.add_argument("--version-compatible", action="store_true", help="engine runs on later TensorRT versions")
    trt.add_argument("--hardware-compatible", action="store_true", help="engine runs on any Ampere+ GPU")
    trt.add_argument("--tf32", action="store_true",
                     help="let FP32 layers use TF32 on Ampere+ GPUs (faster, less exact; default true FP32)")
    trt.add_argument("--max-batch", type=int, default=1, help="largest batch of a dynamic engine, and Triton's "
                     "max_batch_size for a --dynamic export (default 1)")
    trt.add_argument("--min-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                     help="smallest input of a dynamic engine's optimization profile")
    trt.add_argument("--opt-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                     help="input size a dynamic engine is tuned for")
    trt.add_argument("--max-size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"),
                     help="largest input of a dynamic engine's optimization profile")
    trt.add_argument("--keep-fp32", action="append", default=[], metavar="PREFIX[:Op,Op]",
                     help="also keep these nodes in FP32 (repeatable), e.g. FreqFusion0 or Backbone:Softmax")
    trt.add_argument("--no-default-pins", action="store_true",
                     help="do not keep the offset-learning head and FreqFusion normalisation in FP32")
    trt.add_argument("--trt-module", choices=("tensorrt", "tensorrt_rtx"), default="tensorrt",
                     help="TensorRT Python module (default tensorrt; tensorrt_rtx builds engines for RTX GPUs, which "
                          "only TensorRT-RTX's own runtime runs, not offseg-run; it builds on a CPU-only machine)")
    add_common_options(parser)
    add_hidden_aliases(parser, {"--calib-samples": "--calib-images"})
    return run(_export, parser, argv, outputs=_outputs)
