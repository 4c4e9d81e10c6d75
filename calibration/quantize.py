"""Explicit INT8 quantization of an exported OffSeg ONNX file to a Q/DQ graph (ONNX Runtime's static quantizer).

Two flavours, because the consumers differ (measured, ../shared/DEPENDENCIES.md):
- ``tensorrt``: symmetric int8 activations and weights, biases left in float — NVIDIA's parser rejects ORT's
  default int32-bias DequantizeLinear; TensorRT 10+ builds INT8 engines from this graph.
- ``onnxruntime``: ORT's default (uint8 activations, int8 per-channel weights, int32 biases), the CPU flavour: ORT
  fuses every Conv into QLinearConv (139 of 139 on OffSeg-T; the TensorRT flavour gets 43 fused there).
Both quantize Conv only (quantizing attention MatMuls destroyed accuracy in our measurements) and keep the default
FP32 pins (offset-learning head, FreqFusion kernel normalisation) out of INT8.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner

from .files import FUNCTION_DOMAIN, file_sha256, is_derived_from, load_onnx, model_info, read_metadata, save_checked
from .graph import extract_function
from .precision import DEFAULT_PINS, HEAD_SCOPE, PinRule, pinned_nodes
from runtime.errors import OffsegError
from runtime.progress import counted

from .ranges import check_ranges, ranges_key, write_ranges
from .sources import calibration_inputs, data_key

log = logging.getLogger(__name__)

TARGETS = ("tensorrt", "onnxruntime")
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # ours -> ORT's


@dataclass(frozen=True)
class QuantOptions:
    target: str = "tensorrt"
    method: str = "minmax"
    samples: int = 64
    per_channel: bool = True
    op_types: tuple[str, ...] = ("Conv",)
    exclude: tuple[PinRule, ...] = DEFAULT_PINS
    extra_exclude_nodes: tuple[str, ...] = field(default_factory=tuple)  # e.g. from a sensitivity sweep
    cache: Path | None = None  # calibration ranges, reused when present

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise OffsegError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.method not in METHODS:
            raise OffsegError(f"calibration method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.samples < 1:
            raise OffsegError(f"need at least one calibration image, got {self.samples}")


@dataclass(frozen=True)
class QuantResult:
    images: int
    quantized: int  # QuantizeLinear nodes in the output
    excluded: int

    def __str__(self) -> str:
        calibrated = f"calibrated on {counted(self.images, 'image')}" if self.images else "cached calibration ranges"
        return f"{calibrated}, {self.quantized} Q/DQ pairs, {self.excluded} nodes kept float"


def calibrate_ranges(flat_path: Path, inputs: list[np.ndarray], method: str, op_types: tuple[str, ...],
                     cache: Path, key: dict) -> None:
    """Run ONNX Runtime's calibrator one image at a time and write the tensor ranges as its calibration cache (which
    ``quantize_static`` then reads instead of calibrating itself), recording ``key`` (``ranges.ranges_key``).

    Memory stays that of one image: ranges and histograms are merged image by image, and the session runs without
    ONNX Runtime's CPU memory arena, whose power-of-two growth took OffSeg-T at 1024x2048 from 5.9 GB after one
    image to 11.7 GB after two (and OffSeg-B past 24 GB). Shows a progress bar on a terminal.
    """
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    from runtime.progress import progress
    with tempfile.TemporaryDirectory(prefix="offseg-calib-") as folder:
        calibrator = create_calibrator(flat_path, list(op_types), augmented_model_path=str(Path(folder) / "aug.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                                       providers=["CPUExecutionProvider"])
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keeps tensor names
        session_options.enable_cpu_mem_arena = False
        calibrator.infer_session = ort.InferenceSession(calibrator.augmented_model_path, session_options,
                                                        providers=["CPUExecutionProvider"])
        name = calibrator.infer_session.get_inputs()[0].name
        for x in progress(inputs, "calibrating", unit="image"):
            calibrator.collect_data(_OneImage(name, x))
        ort_ranges = Path(folder) / "ranges.json"
        save_tensors_data(calibrator.compute_data(), ort_ranges)
        write_ranges(ort_ranges, cache, key)


class _OneImage:
    """ONNX Runtime's CalibrationDataReader protocol for a single input."""

    def __init__(self, name: str, x: np.ndarray):
        self._item = {name: x}

    def get_next(self):
        item, self._item = self._item, None
        return item


def input_size_for_calibration(meta: dict[str, str], model) -> tuple[int, int]:
    """The graph's static input size, or 512x512 for dynamic graphs."""
    from runtime.limits import check_input_size
    size = meta.get("offseg.input_size", "dynamic")
    if size == "dynamic":
        return 512, 512
    parts = size.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise OffsegError(f"the model's offseg.input_size {size!r} is not 'H W' or 'dynamic'")
    h, w = int(parts[0]), int(parts[1])
    check_input_size(h, w, "the model's offseg.input_size")
    return h, w


def unshare_conv_biases(model: onnx.ModelProto) -> int:
    """Give each Conv its own bias initializer (in place); returns how many copies were made.

    Constant folding merges equal biases into one initializer. ORT's quantizer then copies a shared bias itself,
    naming the copy ``<name><n>`` after checking initializer names only, and the name can clash with an activation
    (bias ``val_1131`` became ``val_11315``, which a Reshape already produced: an invalid graph). Copies named here
    are checked against every name in the graph."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    taken = set(initializers) | {name for node in graph.node for name in [*node.input, *node.output]}
    seen: set[str] = set()
    copies = 0
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        bias = node.input[2]
        if bias not in seen:
            seen.add(bias)
            continue
        index, name = 1, f"{bias}_copy1"
        while name in taken:
            index, name = index + 1, f"{bias}_copy{index + 1}"
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[bias])
        copy.name = name
        graph.initializer.append(copy)
        taken.add(name)
        node.input[2] = name
        copies += 1
    return copies


def recorded_data_key(calib_data, options: QuantOptions) -> str:
    """What an INT8 file records as ``offseg.int8_data_key``: the cached ranges' digest when ``options.cache``
    exists, else the digest of the calibration images (``sources.data_key``)."""
    if options.cache is not None and Path(options.cache).is_file():
        return f"ranges {file_sha256(options.cache)}"
    return data_key(calib_data, options.samples)


def quantize_unless_current(source: Path, path: Path, calib_data, options: QuantOptions = QuantOptions(),
                            calib_key: str | None = None) -> QuantResult | None:
    """``quantize_file`` unless ``path`` already holds a quantization of this very ``source`` with the same target,
    method, FP32 pins and calibration images (or cached ranges); returns None when ``path`` is reused.
    ``calib_key``: ``recorded_data_key`` when the caller has it already."""
    calib_key = calib_key or recorded_data_key(calib_data, options)
    same = {"offseg.precision": "int8", "offseg.int8_target": options.target, "offseg.int8_method": options.method,
            "offseg.int8_data_key": calib_key, "offseg.int8_excluded": _excluded_text(options)}
    if is_derived_from(path, source, same):
        return None
    return quantize_file(source, path, calib_data, options, calib_key)


def _excluded_text(options: QuantOptions) -> str:
    return " ".join(map(str, options.exclude))


def quantize_file(source: Path, path: Path, calib_data, options: QuantOptions = QuantOptions(),
                  calib_key: str | None = None) -> QuantResult:
    """Quantize the FP32 ONNX export ``source`` into the Q/DQ graph ``path`` (written atomically); ``calib_key``:
    ``recorded_data_key`` when the caller has it already."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    options.validate()
    calib_key = calib_key or recorded_data_key(calib_data, options)  # before calibrating writes options.cache
    model = load_onnx(source)
    meta = read_metadata(model)
    if meta.get("offseg.precision", "fp32") != "fp32":
        raise OffsegError(f"{source} is {meta['offseg.precision']}; quantize the FP32 export")
    has_function = any(f.name == HEAD_SCOPE for f in model.functions)
    flat = onnx.inliner.inline_local_functions(model) if has_function else model
    unshare_conv_biases(flat)
    excluded = pinned_nodes(flat, options.exclude) + list(options.extra_exclude_nodes)
    cached = options.cache is not None and Path(options.cache).is_file()
    input_size = input_size_for_calibration(meta, flat)
    key = ranges_key(source, options.method, options.op_types, input_size, data_key(calib_data, options.samples))
    if cached:
        check_ranges(options.cache, key)
    info = model_info(flat, source)
    inputs = [] if cached else calibration_inputs(calib_data, options.samples, input_size, info.input_format,
                                                  info.input_layout)
    tensorrt = options.target == "tensorrt"
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False} if tensorrt else {}
    with tempfile.TemporaryDirectory(prefix="offseg-int8-") as folder:
        flat_path, out_path = Path(folder) / "flat.onnx", Path(folder) / "int8.onnx"
        onnx.save(flat, flat_path)
        short = f"; {calib_data} gives only {len(inputs)} of the {options.samples} asked for" \
            if not cached and len(inputs) < options.samples else ""
        log.info("calibrating on %s (%s, %s)%s",
                 f"cached ranges {options.cache}" if cached else counted(len(inputs), "image"), options.method,
                 options.target, short)
        cache = Path(options.cache) if options.cache is not None else Path(folder) / "ranges.json"
        if not cached:
            calibrate_ranges(flat_path, inputs, options.method, options.op_types, cache, key)
        quantize_static(str(flat_path), str(out_path), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(options.op_types), per_channel=options.per_channel,
                        activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                        calibrate_method=getattr(CalibrationMethod, METHODS[options.method]),
                        extra_options=extra, calibration_cache_path=cache)
        quantized = onnx.load(str(out_path))
    if has_function:
        quantized = extract_function(quantized, HEAD_SCOPE, FUNCTION_DOMAIN)
    pairs = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    meta = {**meta, "offseg.precision": "int8", "offseg.int8_target": options.target,
            "offseg.int8_method": options.method, "offseg.int8_images": "cached" if cached else str(len(inputs)),
            "offseg.int8_data": str(calib_data),
            "offseg.int8_data_key": calib_key,
            "offseg.int8_excluded": _excluded_text(options),
            "offseg.source_onnx_sha256": file_sha256(source)}
    save_checked(quantized, meta, path)
    return QuantResult(len(inputs), pairs, len(excluded))
