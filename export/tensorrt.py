"""TensorRT engines (``.plan`` + JSON sidecar) from OffSeg ONNX graphs, for both TensorRT generations.

- TensorRT 10.x (JetPack 6 on Jetson Orin ships 10.3): FP16/INT8 builder flags, the FP32 pins as layer precision
  constraints, DLA cores with GPU fallback.
- TensorRT 11.x and TensorRT-RTX: no precision flags; the network is strongly typed and precision comes from the
  graph: the AutoCast FP16 graph (pins already in FP32) or the Q/DQ INT8 graph.

The decisions (``plan_build``, ``profile_shapes``, ``layers_to_pin``, ``explain_build_failure``) are plain
functions; ``TrtBuilder`` makes the API calls. The TensorRT module is ``tensorrt`` when installed, else
``tensorrt_rtx`` (which builds engines even without a GPU, for RTX cards).
"""
from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.device import cuda_device, module_installed
from runtime.engine_meta import write_sidecar
from runtime.errors import OffsegError
from runtime.limits import check_image_pixels
from runtime.preprocess import SIZE_DIVISOR
from runtime.sinks import write_file

from calibration.files import file_sha256
from calibration.precision import DEFAULT_PINS, PinRule

log = logging.getLogger(__name__)

DEVICE_BUILD_HINT = ("copy the ONNX file to the device and build there: "
                     "offseg-export --onnx MODEL.onnx --format engine [--fp16] [--int8 ...]")


@dataclass(frozen=True)
class EngineOptions:
    """How to build. ``shapes`` is (min, opt, max) (H, W) for dynamic-size graphs."""

    fp16: bool = False
    int8: bool = False
    workspace_mib: int | None = None
    dla_core: int | None = None
    optimization_level: int = 3
    timing_cache: Path | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    tf32: bool = False
    max_batch: int = 1
    shapes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((256, 256), (512, 512), (1024, 2048))
    pins: tuple[PinRule, ...] = DEFAULT_PINS

    @property
    def precision(self) -> str:
        return "+".join(p for p, on in (("fp16", self.fp16), ("int8", self.int8)) if on) or "fp32"

    def validate(self) -> None:
        if not 0 <= self.optimization_level <= 5:
            raise OffsegError(f"--opt-level must be 0..5, got {self.optimization_level}")
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise OffsegError(f"--workspace must be a positive number of MiB, got {self.workspace_mib}")
        if self.max_batch < 1:
            raise OffsegError(f"--max-batch must be at least 1, got {self.max_batch}")
        low, opt, high = self.shapes
        for h, w in self.shapes:
            if h % SIZE_DIVISOR or w % SIZE_DIVISOR or h < 2 * SIZE_DIVISOR or w < 2 * SIZE_DIVISOR:
                raise OffsegError(f"profile size {h}x{w} must be multiples of {SIZE_DIVISOR}, at least 64")
            check_image_pixels(h, w, "profile size")
        if not (low[0] <= opt[0] <= high[0] and low[1] <= opt[1] <= high[1]):
            raise OffsegError(f"profile sizes must grow: min {low} <= opt {opt} <= max {high}")


@dataclass(frozen=True)
class TrtCapabilities:
    """What the installed TensorRT offers (feature checks, not version guesses)."""

    module: str
    version: str
    precision_flags: bool  # BuilderFlag.FP16/INT8 exist (TensorRT <= 10)
    precision_constraints: bool  # BuilderFlag.OBEY_PRECISION_CONSTRAINTS exists
    dla_cores: int = 0


@dataclass(frozen=True)
class BuildPlan:
    """Which ONNX graph to parse (``fp32``, ``fp16`` AutoCast graph, ``int8`` Q/DQ graph) and how to build it."""

    onnx_precision: str
    strongly_typed: bool
    flags: tuple[str, ...]
    pin_layers: bool
    dla_core: int | None = None
    notes: tuple[str, ...] = ()
    tf32: bool = False  # TF32 stays on (TensorRT's default); else FP32 layers run in true FP32


def plan_build(options: EngineOptions, caps: TrtCapabilities, dynamic: bool) -> BuildPlan:
    """The build recipe for ``options`` on this TensorRT; OffsegError for combinations it cannot build."""
    flags, notes = [], []
    if options.version_compatible:
        flags.append("VERSION_COMPATIBLE")
    if options.dla_core is not None:
        if not caps.precision_flags:
            raise OffsegError(f"{caps.module} {caps.version} has no DLA support; DLA engines are built with "
                              "JetPack's TensorRT 10 on the Jetson")
        if caps.dla_cores == 0:
            raise OffsegError("this device has no DLA core (DLA exists on Jetson AGX/NX Orin and Xavier)")
        if not 0 <= options.dla_core < caps.dla_cores:
            raise OffsegError(f"--dla-core {options.dla_core} does not exist (this device has {caps.dla_cores})")
        if not (options.fp16 or options.int8):
            raise OffsegError("DLA runs FP16 or INT8 only: add --fp16 and/or --int8")
        if dynamic:
            raise OffsegError("DLA needs a static input size: export with --input-size H W, without --dynamic")
        flags.append("GPU_FALLBACK")
        notes.append("layers DLA cannot run fall back to the GPU")
    if caps.precision_flags:
        flags += [name for name, on in (("FP16", options.fp16), ("INT8", options.int8)) if on]
        pin = bool(options.pins) and options.precision != "fp32"
        if pin and caps.precision_constraints:
            flags.append("OBEY_PRECISION_CONSTRAINTS")
        elif pin:
            notes.append("this TensorRT cannot obey precision constraints; FP32 pins are hints only")
        return BuildPlan("int8" if options.int8 else "fp32", False, tuple(flags), pin, options.dla_core, tuple(notes),
                         options.tf32)
    if options.fp16 and options.int8:
        raise OffsegError(f"{caps.module} {caps.version} builds strongly typed only: use --int8 alone (the Q/DQ "
                          "graph's other layers run in FP32) or --fp16 alone")
    notes.append("strongly typed: precision comes from the graph")
    precision = "int8" if options.int8 else "fp16" if options.fp16 else "fp32"
    return BuildPlan(precision, True, tuple(flags), False, None, tuple(notes), options.tf32)


def profile_shapes(input_shape: list[int | str], options: EngineOptions,
                   input_layout: str = "nchw") -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of an NCHW (or ``input_layout`` nhwc: NHWC) input whose batch/H/W may be symbolic;
    empty when all are fixed."""
    if all(isinstance(d, int) and d > 0 for d in input_shape):
        return {}
    if input_layout == "nhwc":
        n, h, w, c = input_shape
    else:
        n, c, h, w = input_shape
    fixed_batch = isinstance(n, int) and n > 0

    def shape(batch: int, size: tuple[int, int]) -> tuple[int, ...]:
        rows, cols = (h if isinstance(h, int) and h > 0 else size[0], w if isinstance(w, int) and w > 0 else size[1])
        n_out = n if fixed_batch else batch
        return (n_out, rows, cols, c) if input_layout == "nhwc" else (n_out, c, rows, cols)

    low, opt, high = options.shapes
    return {"min": shape(1, low), "opt": shape(1, opt), "max": shape(options.max_batch, high)}


def layers_to_pin(layer_names: list[str], pinned_node_names: list[str]) -> list[str]:
    """TensorRT layers that come from pinned ONNX nodes (the parser names layers after nodes, adding suffixes)."""
    pinned = set(pinned_node_names)
    prefixes = tuple(sorted(pinned))
    return [name for name in layer_names if name in pinned or (prefixes and name.startswith(prefixes))]


def explain_build_failure(errors: list[str], options: EngineOptions) -> str:
    """One sentence for a failed build, from the builder's error log."""
    text = " ".join(errors).lower()
    if "no implementation" in text or "could not find any implementation" in text:
        workspace = f"--workspace {options.workspace_mib}" if options.workspace_mib else "the default workspace"
        return ("TensorRT found no implementation for a layer: on Jetson a workspace larger than the free shared "
                f"memory causes this; retry with a smaller --workspace (now {workspace}), e.g. 1024")
    if "out of memory" in text or "outofmemory" in text:
        return "TensorRT ran out of GPU memory while building: close other GPU programs or lower --max-batch"
    last = errors[-1] if errors else "no error message"
    return f"TensorRT could not build the engine: {last}"


def import_tensorrt(module: str | None = None):
    """The TensorRT Python module (``tensorrt`` unless ``module`` names ``tensorrt_rtx``), or OffsegError saying
    what to install.

    TensorRT-RTX is never picked by default: its engines run only on RTX GPUs through its own runtime, which
    offseg-run does not drive, so a default build with it would make a file nothing here can run.
    """
    name = module or "tensorrt"
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    if name == "tensorrt_rtx":
        raise OffsegError("TensorRT-RTX is not installed: pip install tensorrt-rtx (or drop --trt-module)")
    rtx = module_installed("tensorrt_rtx")
    raise OffsegError("TensorRT is not installed here" + (
        " (TensorRT-RTX is, but its engines run only on RTX GPUs through TensorRT-RTX's own runtime, which offseg-run "
        "does not drive; --trt-module tensorrt_rtx builds one anyway)" if rtx else "") + ": JetPack provides it on a "
        f"Jetson, pip install 'offseg-deploy[gpu]' on an x86 GPU machine; or {DEVICE_BUILD_HINT}")


def capabilities(trt, builder) -> TrtCapabilities:
    flags = trt.BuilderFlag
    return TrtCapabilities(trt.__name__, trt.__version__, hasattr(flags, "FP16"),
                           hasattr(flags, "OBEY_PRECISION_CONSTRAINTS"), int(getattr(builder, "num_DLA_cores", 0)))


def _collecting_logger(trt, errors: list[str]):
    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, message):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                errors.append(message)
                log.error("TensorRT: %s", message)
            elif severity == trt.ILogger.Severity.WARNING:
                log.debug("TensorRT: %s", message)

    return CollectingLogger()


@dataclass
class EngineBuild:
    """What ``TrtBuilder.build`` wrote and how."""

    path: Path
    sidecar: Path
    plan: BuildPlan
    seconds: float
    pinned_layers: list[str] = field(default_factory=list)


class TrtBuilder:
    """The installed TensorRT's builder: ``plan`` decides, ``build`` parses an ONNX file and writes the engine."""

    def __init__(self, module: str | None = None):
        self.trt = import_tensorrt(module)
        self.errors: list[str] = []
        self.logger = _collecting_logger(self.trt, self.errors)
        try:
            self.builder = self.trt.Builder(self.logger)
        except TypeError:
            raise OffsegError(f"{self.trt.__name__} {self.trt.__version__} found no usable GPU (no CUDA driver?); "
                              f"{DEVICE_BUILD_HINT}") from None
        self.caps = capabilities(self.trt, self.builder)

    def plan(self, options: EngineOptions, dynamic: bool) -> BuildPlan:
        return plan_build(options, self.caps, dynamic)

    def build(self, onnx_path: Path, engine_path: Path, options: EngineOptions, plan: BuildPlan, onnx_info: dict,
              pinned_node_names: list[str]) -> EngineBuild:
        """Parse ``onnx_path`` (the graph ``plan`` asks for) and write the engine and its sidecar atomically.

        ``onnx_info`` is the ONNX metadata (model, classes, input, normalization, hashes) copied into the sidecar.
        """
        trt, builder = self.trt, self.builder
        self.errors.clear()
        strongly_typed = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(strongly_typed if plan.strongly_typed else 0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            reasons = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise OffsegError(f"TensorRT's ONNX parser rejected {onnx_path}: {reasons}")
        config = builder.create_builder_config()
        for flag in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if not plan.tf32:
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default: an "FP32" engine would be TF32 on Ampere+
        if options.workspace_mib:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
        config.builder_optimization_level = options.optimization_level
        if options.hardware_compatible:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        if plan.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = plan.dla_core
        _add_profile(builder, network, config, options, onnx_info.get("offseg.input_layout", "nchw"))
        pinned = _pin_layers(trt, network, pinned_node_names) if plan.pin_layers else []
        cache = _load_timing_cache(config, options.timing_cache)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        if serialized is None:
            raise OffsegError(explain_build_failure(self.errors, options))
        info = sidecar_info(onnx_info, options, plan, self.caps, pinned, seconds)
        info["onnx"]["file_sha256"] = file_sha256(onnx_path)
        write_file(engine_path, bytes(serialized))  # the plan and its sidecar, with nothing that can fail between
        sidecar = write_sidecar(engine_path, info)
        if cache is not None:
            _save_timing_cache(config, options.timing_cache)
        return EngineBuild(engine_path, sidecar, plan, seconds, pinned)


def sidecar_info(onnx_info: dict, options: EngineOptions, plan: BuildPlan, caps: TrtCapabilities,
                 pinned: list[str], seconds: float) -> dict:
    """The sidecar's content: the model (from the ONNX metadata), the build and the machine it was built on."""
    device = cuda_device()  # the GPU; a DLA core number is not a CUDA device index
    meta = {k.removeprefix("offseg."): v for k, v in onnx_info.items() if k.startswith("offseg.")}
    return {
        "model": meta.get("model"),
        "num_classes": int(meta.get("num_classes", 0)),
        "onnx": meta,
        "precision": options.precision,
        "fp32_pins": [str(rule) for rule in options.pins] if options.precision != "fp32" else [],
        "pinned_layers": pinned,
        "build": {"flags": list(plan.flags), "strongly_typed": plan.strongly_typed, "notes": list(plan.notes),
                  "workspace_mib": options.workspace_mib, "optimization_level": options.optimization_level,
                  "max_batch": options.max_batch, "profile_shapes": [list(s) for s in options.shapes],
                  "tf32": plan.tf32, "seconds": round(seconds, 1)},
        "tensorrt": {"module": caps.module, "version": caps.version,
                     "version_compatible": options.version_compatible,
                     "hardware_compatibility": "AMPERE_PLUS" if options.hardware_compatible else "NONE"},
        "dla_core": plan.dla_core,
        "gpu": device.as_dict() if device else None,
    }


def _add_profile(builder, network, config, options: EngineOptions, input_layout: str) -> None:
    tensor = network.get_input(0)
    shapes = profile_shapes([int(d) if d >= 0 else "?" for d in tensor.shape], options, input_layout)
    if shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
        log.info("optimization profile %s: min %s opt %s max %s", tensor.name, *shapes.values())


def _pin_layers(trt, network, pinned_node_names: list[str]) -> list[str]:
    """Set FP32 precision and outputs on the layers ``pinnable_layers`` selects (TensorRT 10 path)."""
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    names = pinnable_layers(trt, network, pinned_node_names)
    for name in names:
        layer = layers[name]
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
    return names


def pinnable_layers(trt, network, pinned_node_names: list[str]) -> list[str]:
    """The layers of a parsed network to pin to FP32: those of pinned nodes that compute on floating-point tensors.

    Left alone, as ``trtexec --layerPrecisions`` leaves them: integer layers (shape arithmetic such as an INT64 Div,
    Concat or Reshape under a pinned scope: TensorRT has no FP32 implementation and fails the build under
    OBEY_PRECISION_CONSTRAINTS), and layers whose first input is a shape tensor (an INT64 -> FLOAT Cast or the Fill
    of an arange: host-side shape computations, not kernels).
    """
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    return [name for name in layers_to_pin(list(layers), pinned_node_names)
            if is_floating_point_layer(trt, layers[name]) and not takes_a_shape_tensor(layers[name])]


def is_floating_point_layer(trt, layer) -> bool:
    """Whether every output of a parsed network's ``layer`` is a float tensor (FP32, FP16 or BF16)."""
    floats = (trt.float32, trt.float16, trt.bfloat16)
    return all(layer.get_output(i).dtype in floats for i in range(layer.num_outputs))


def takes_a_shape_tensor(layer) -> bool:
    """Whether the first input of ``layer`` is a shape tensor (a value TensorRT computes at build/enqueue time)."""
    first = layer.get_input(0) if layer.num_inputs else None
    return first is not None and first.is_shape_tensor


def _load_timing_cache(config, path: Path | None):
    """Reuse the timing cache at ``path`` (a new one on first use, or when it comes from another device or TensorRT,
    which ``set_timing_cache`` refuses); None when no cache was asked for or none can be set."""
    if path is None:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    log.warning("timing cache %s was made on another GPU or TensorRT version: starting a new one", path)
    cache = config.create_timing_cache(b"")
    return cache if config.set_timing_cache(cache, ignore_mismatch=False) else None


def _save_timing_cache(config, path: Path) -> None:
    """Write the builder's updated timing cache to ``path`` (TensorRT may have none to give)."""
    cache = config.get_timing_cache()
    if cache is None:
        log.warning("TensorRT returned no timing cache; %s is left as it was", path)
        return
    write_file(path, bytes(cache.serialize()))
