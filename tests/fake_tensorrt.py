"""A strict fake ``tensorrt`` module for one TensorRT release, from the API surface in ``tests/data/tensorrt_*.json``.

Every name the code touches must exist in that release's bindings: an unknown module attribute, class attribute,
enum member or property assignment raises AttributeError, as the real module does. Names the release has but this
fake does not model raise ``FakeGap`` (not AttributeError, so ``hasattr`` cannot hide them).

The behaviour follows TensorRT's documented rules that the project depends on: the ONNX parser names layers after
nodes; layers forced to FP32 with OBEY_PRECISION_CONSTRAINTS fail the build when their outputs are integer; TF32 is
on by default; a timing cache from another device is refused; engines deserialize only in the exact TensorRT
version that built them unless version-compatible, and then only with ``engine_host_code_allowed``; a DLA engine
runs on the runtime's ``DLA_core``. Execution reads the input from fake device memory and writes a known function
of it (mean over channels times the class index + 1, pooled by the output stride) to the output.
"""
from __future__ import annotations

import enum
import importlib.machinery
import json
import re
import sys
import types
from pathlib import Path

import numpy as np

from fake_cuda import FakeGpu

DATA = Path(__file__).parent / "data"
SURFACES = {"10.3.0": "tensorrt_10.3.json", "11.1.0": "tensorrt_11.1.json"}
PLAN_MAGIC = b"FAKEPLAN"
DATATYPE_ALIASES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int8": "INT8", "int32": "INT32",
                    "int64": "INT64", "bool": "BOOL", "uint8": "UINT8", "fp8": "FP8", "int4": "INT4", "fp4": "FP4",
                    "e8m0": "E8M0"}
NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
               "BOOL": np.bool_, "UINT8": np.uint8}
ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8", 16: "BF16"}


class FakeGap(RuntimeError):
    """The release has this attribute but the fake does not model it."""


def load_surface(version: str) -> dict:
    return json.loads((DATA / SURFACES[version]).read_text())


def _class_attributes(surface: dict, name: str) -> set[str]:
    entry = surface["classes"][name]
    names = set(entry["attributes"])
    for base in entry["bases"]:
        names |= _class_attributes(surface, base)
    return names


class Strict:
    """Base of the fake classes: public attributes limited to the release's surface for ``_api`` (set per module)."""

    _api: str
    _allowed: frozenset = frozenset()
    _properties: frozenset = frozenset()
    _release: str = ""

    def __getattribute__(self, name: str):
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        cls = type(self)
        if name not in cls._allowed:
            raise AttributeError(f"'tensorrt.{cls._api}' object has no attribute '{name}' (TensorRT {cls._release})")
        try:
            return object.__getattribute__(self, name)
        except AttributeError:
            raise FakeGap(f"fake tensorrt.{cls._api}.{name} is not modelled") from None

    def __setattr__(self, name: str, value) -> None:
        cls = type(self)
        if not name.startswith("_") and name not in cls._properties:
            raise AttributeError(f"'tensorrt.{cls._api}' object has no property '{name}' (TensorRT {cls._release})")
        object.__setattr__(self, name, value)


class HostMemory(bytes):
    """``IHostMemory``: a buffer (bytes here) with the binding's few attributes."""

    def __getattribute__(self, name: str):
        if not name.startswith("_") and name not in ("nbytes", "dtype", "__buffer__"):
            raise AttributeError(f"'tensorrt.IHostMemory' object has no attribute '{name}'")
        return bytes.__getattribute__(self, name)

    @property
    def nbytes(self) -> int:
        return len(self)


class Tensor(Strict):
    _api = "ITensor"

    def __init__(self, name: str, dtype, shape: tuple, is_shape_tensor: bool = False):
        self._name, self._dtype, self._shape, self._is_shape = name, dtype, tuple(shape), is_shape_tensor

    name = property(lambda self: self._name)
    dtype = property(lambda self: self._dtype)
    shape = property(lambda self: self._shape)
    is_shape_tensor = property(lambda self: self._is_shape)


class Layer(Strict):
    _api = "ILayer"

    def __init__(self, trt, name: str, outputs: list[Tensor], inputs: list[Tensor | None] = ()):
        self._trt, self._name, self._outputs, self._inputs = trt, name, outputs, list(inputs)
        self._precision, self._precision_set, self._output_types = trt.float32, False, {}

    name = property(lambda self: self._name)
    num_outputs = property(lambda self: len(self._outputs))
    num_inputs = property(lambda self: len(self._inputs))

    def get_input(self, index: int) -> Tensor | None:
        return self._inputs[index]

    def get_output(self, index: int) -> Tensor:
        return self._outputs[index]

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value) -> None:
        self._precision, self._precision_set = self._trt.DataType(value), True

    def set_output_type(self, index: int, dtype) -> None:
        self._output_types[index] = self._trt.DataType(dtype)


class Network(Strict):
    _api = "INetworkDefinition"

    def __init__(self, strongly_typed: bool):
        self._strongly_typed, self._inputs, self._outputs, self._layers = strongly_typed, [], [], []
        self._output_dims: list = []

    num_layers = property(lambda self: len(self._layers))
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_layer(self, index: int) -> Layer:
        return self._layers[index]

    def get_input(self, index: int) -> Tensor:
        return self._inputs[index]

    def get_output(self, index: int) -> Tensor:
        return self._outputs[index]


class OnnxParser(Strict):
    _api = "OnnxParser"

    def __init__(self, network: Network, logger):
        if not isinstance(network, Network) or not isinstance(logger, type(self)._trt.ILogger):
            raise TypeError("OnnxParser(network: INetworkDefinition, logger: ILogger)")
        self._network, self._errors = network, []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> str:
        return self._errors[index]

    def parse_from_file(self, path: str) -> bool:
        """One layer per node (functions inlined), dtypes from ONNX shape inference, symbolic dims as -1."""
        import onnx
        import onnx.inliner
        trt = type(self)._trt
        if not isinstance(path, str):
            raise TypeError("parse_from_file(model: str)")
        model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(onnx.load(path)))
        graph = model.graph
        types_ = {v.name: v.type.tensor_type for v in [*graph.input, *graph.output, *graph.value_info]}

        constants = {i.name: i for i in graph.initializer}  # TensorRT makes each a constant layer's output
        ranks = {**{n: len(t.shape.dim) for n, t in types_.items()}, **{n: len(i.dims) for n, i in constants.items()}}
        shape_tensors = _shape_tensors(graph, ranks)

        def tensor(name: str, node=None, index: int = 0) -> Tensor:
            """The tensor ``name``; a constant is made per use (as the parser does), so its shape-ness is the
            reading node's."""
            if name in constants:
                elem_type, dims = constants[name].data_type, tuple(constants[name].dims)
                is_shape = node is not None and _reads_a_shape(node, index, ranks[name], shape_tensors)
            else:
                kind = types_[name]
                elem_type, is_shape = kind.elem_type, name in shape_tensors
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
            return trt._make("ITensor", name, trt.DataType[ONNX_TYPES[elem_type]], dims, is_shape)

        network = self._network
        network._inputs = [tensor(v.name) for v in graph.input]
        network._outputs = [tensor(v.name) for v in graph.output]
        network._output_dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                                for v in graph.output]
        network._input_dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in graph.input]
        network._layers = [trt._make("ILayer", trt, _layer_name(node.name),
                                     [tensor(o) for o in node.output if o in types_],
                                     [tensor(i, node, k) if i else None for k, i in enumerate(node.input)])
                           for node in graph.node]
        return True


# The inputs TensorRT reads as shapes (host values), by ONNX op: what makes a tensor a shape tensor.
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "Tile": (1,),
                "Slice": (1, 2, 3, 4), "Resize": (3,), "Pad": (1,), "TopK": (1,), "Unsqueeze": (1,), "Squeeze": (1,)}


def _layer_name(node_name: str) -> str:
    """The parser names a layer after its node; a function's nodes keep their own names (onnx's inliner adds a
    ``__N`` suffix, which the real parse of the inlined function does not show)."""
    return re.sub(r"__\d+$", "", node_name)


def _shape_tensors(graph, ranks: dict[str, int]) -> set[str]:
    """Names of the tensors the parser makes shape tensors: those read as shapes, and, going backwards, the 0-D/1-D
    inputs of nodes that compute one (a Shape node's input is data, not a shape). ``ranks``: each tensor's rank."""
    shapes: set[str] = set()
    for node in reversed(graph.node):
        shapes.update(name for index, name in enumerate(node.input)
                      if name and _reads_a_shape(node, index, ranks.get(name, 99), shapes))
    return shapes


def _reads_a_shape(node, index: int, rank: int, shape_tensors: set[str]) -> bool:
    """Whether ``node`` reads its input ``index`` (of ``rank``) as a shape: a shape slot of its op, or any 0-D/1-D
    input of a node that computes a shape tensor (a Shape node's input is data, not a shape)."""
    if index in SHAPE_INPUTS.get(node.op_type, ()):
        return True
    return node.op_type not in ("Shape", "Size") and rank <= 1 and bool(shape_tensors & set(node.output))


class OptimizationProfile(Strict):
    _api = "IOptimizationProfile"

    def __init__(self):
        self._shapes = {}

    def set_shape(self, name: str, min, opt, max) -> None:  # noqa: A002 (the binding's argument names)
        self._shapes[name] = tuple(tuple(int(d) for d in s) for s in (min, opt, max))


class TimingCache(Strict):
    _api = "ITimingCache"

    def __init__(self, data: bytes, device: str):
        self._device = data.decode() if data else device

    def serialize(self) -> HostMemory:
        return HostMemory(self._device.encode())


class BuilderConfig(Strict):
    _api = "IBuilderConfig"

    def __init__(self, trt, device: str):
        self._trt, self._device, self._profiles, self._cache = trt, device, [], None
        self._flags = {trt.BuilderFlag.TF32}  # on by default (NvInfer.h)
        self._pools = {}
        object.__setattr__(self, "builder_optimization_level", 3)
        object.__setattr__(self, "hardware_compatibility_level", trt.HardwareCompatibilityLevel.NONE)
        object.__setattr__(self, "default_device_type", trt.DeviceType.GPU)
        object.__setattr__(self, "DLA_core", -1)

    def set_flag(self, flag) -> None:
        self._flags.add(self._trt.BuilderFlag(flag))

    def clear_flag(self, flag) -> None:
        self._flags.discard(self._trt.BuilderFlag(flag))

    def get_flag(self, flag) -> bool:
        return self._trt.BuilderFlag(flag) in self._flags

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self._pools[self._trt.MemoryPoolType(pool)] = int(size)

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
        return self._trt._make("ITimingCache", bytes(serialized_timing_cache), self._device)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if cache._device != self._device and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self):
        return self._cache


def _takes_logger(instance: Strict, logger):
    """The fake module of ``instance``; TypeError unless ``logger`` is an ILogger (pybind checks the type)."""
    trt = type(instance)._trt
    if not isinstance(logger, trt.ILogger):
        raise TypeError(f"{type(instance)._api}(logger: ILogger)")
    return trt


class Builder(Strict):
    _api = "Builder"

    def __init__(self, logger):
        self._trt, self._logger = _takes_logger(self, logger), logger

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802
        return self._trt._dla_cores

    def create_network(self, flags: int = 0) -> Network:
        strongly_typed = 1 << int(self._trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return self._trt._make("INetworkDefinition", bool(flags & strongly_typed))

    def create_builder_config(self) -> BuilderConfig:
        return self._trt._make("IBuilderConfig", self._trt, self._trt._gpu.name)

    def create_optimization_profile(self) -> OptimizationProfile:
        return self._trt._make("IOptimizationProfile")

    def _fail(self, message: str):
        self._logger.log(self._trt.ILogger.Severity.ERROR, message)
        return None

    def build_serialized_network(self, network: Network, config: BuilderConfig):
        trt, flags = self._trt, config._flags
        dynamic = any(d < 0 for d in network.get_input(0).shape)
        if dynamic and not config._profiles:
            return self._fail("Network has dynamic or shape inputs, but no optimization profile has been defined.")
        if getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) in flags:
            for layer in network._layers:
                integer = [o for o in layer._outputs if o.dtype not in (trt.float32, trt.float16, trt.bfloat16)]
                if layer._precision_set and layer._precision == trt.float32 and integer:
                    return self._fail(f"Could not find any implementation for node {layer.name} "
                                      "with the requested precision constraints")
        if config.default_device_type == trt.DeviceType.DLA and dynamic:
            return self._fail("DLA does not support dynamic shapes")
        profile = config._profiles[0]._shapes if config._profiles else {}
        plan = {"version": trt.__version__, "inputs": [(t.name, int(t.dtype), t.shape) for t in network._inputs],
                "outputs": [(t.name, int(t.dtype), dims) for t, dims in zip(network._outputs, network._output_dims)],
                "input_dims": network._input_dims, "profile": {k: list(v) for k, v in profile.items()},
                "version_compatible": trt.BuilderFlag.VERSION_COMPATIBLE in flags,
                "tf32": trt.BuilderFlag.TF32 in flags, "flags": sorted(f.name for f in flags),
                "dla_core": config.DLA_core if config.default_device_type == trt.DeviceType.DLA else None}
        return HostMemory(PLAN_MAGIC + json.dumps(plan).encode())


class Engine(Strict):
    _api = "ICudaEngine"

    def __init__(self, trt, plan: dict, dla_core: int):
        self._trt, self._plan, self._dla_core = trt, plan, dla_core
        self._io = [(n, trt.TensorIOMode.INPUT, trt.DataType(d), s) for n, d, s in plan["inputs"]] + \
                   [(n, trt.TensorIOMode.OUTPUT, trt.DataType(d), dims) for n, d, dims in plan["outputs"]]

    num_io_tensors = property(lambda self: len(self._io))

    def _tensor(self, name: str):
        return next(t for t in self._io if t[0] == name)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str):
        return self._tensor(name)[1]

    def get_tensor_dtype(self, name: str):
        return self._tensor(name)[2]

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(d if isinstance(d, int) and d > 0 else -1 for d in self._tensor(name)[3])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        if profile_index != 0 or name not in self._plan["profile"]:
            raise RuntimeError("no optimization profile for this tensor")
        return [tuple(s) for s in self._plan["profile"][name]]

    def create_execution_context(self):
        return self._trt._make("IExecutionContext", self)


class ExecutionContext(Strict):
    _api = "IExecutionContext"

    def __init__(self, engine: Engine):
        self._engine, self._shapes, self._addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape) -> bool:
        engine = self._engine
        shape = tuple(int(d) for d in shape)
        declared = engine.get_tensor_shape(name)
        if len(shape) != len(declared) or any(d > 0 and d != s for d, s in zip(declared, shape)):
            return False
        if name in engine._plan["profile"]:
            low, _, high = engine._plan["profile"][name]
            if any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        engine = self._engine
        if engine.get_tensor_mode(name) == engine._trt.TensorIOMode.INPUT:
            return self._shapes.get(name, engine.get_tensor_shape(name))
        (input_name, _, _, _), = [t for t in engine._io if t[1] == engine._trt.TensorIOMode.INPUT]
        values = dict(zip(engine._plan["input_dims"][0], self._shapes.get(input_name, ())))
        return tuple(_dimension(d, values) for d in engine._tensor(name)[3])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(memory, int):
            raise TypeError("set_tensor_address(name: str, memory: int)")
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self._engine
        trt, gpu = engine._trt, engine._trt._gpu
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3(stream_handle: int)")
        if not gpu.context_current():
            engine._trt._log_error("Cuda Runtime (invalid device context)")
            return False
        if not gpu.stream_alive(stream_handle):  # a real GPU often crashes instead (an H200 did on getPtr())
            engine._trt._log_error("Cuda Runtime (invalid resource handle)")
            return False
        (in_name, _, in_type, _), = [t for t in engine._io if t[1] == trt.TensorIOMode.INPUT]
        (out_name, _, out_type, _), = [t for t in engine._io if t[1] == trt.TensorIOMode.OUTPUT]
        if in_name not in self._shapes or {in_name, out_name} - set(self._addresses):
            return False
        in_shape, out_shape = self._shapes[in_name], self.get_tensor_shape(out_name)
        in_dtype, out_dtype = NUMPY_TYPES[in_type.name], NUMPY_TYPES[out_type.name]
        batch = gpu.view(self._addresses[in_name], int(np.prod(in_shape)) * np.dtype(in_dtype).itemsize, in_dtype,
                         in_shape)
        out = gpu.view(self._addresses[out_name], int(np.prod(out_shape)) * np.dtype(out_dtype).itemsize,
                       out_dtype, out_shape)
        out[...] = reference_output(batch, out_shape)
        return True


def reference_output(batch: np.ndarray, out_shape: tuple) -> np.ndarray:
    """What the fake engine computes: per class k, (k + 1) x the channel mean, average-pooled to the output size."""
    n, k, h, w = out_shape
    mean = batch.astype(np.float32).mean(1)
    pooled = mean.reshape(n, h, mean.shape[1] // h, w, mean.shape[2] // w).mean((2, 4))
    return pooled[:, None] * np.arange(1, k + 1, dtype=np.float32)[None, :, None, None]


def _dimension(dim, values: dict) -> int:
    """An output dim: a number, an input dim's name, or ``name/stride``."""
    if isinstance(dim, int) and dim > 0:
        return dim
    name, _, stride = str(dim).partition("/")
    return values[name] // int(stride or 1)


class Runtime(Strict):
    _api = "Runtime"

    def __init__(self, logger):
        self._trt = _takes_logger(self, logger)
        object.__setattr__(self, "DLA_core", -1)
        object.__setattr__(self, "engine_host_code_allowed", False)

    def deserialize_cuda_engine(self, serialized_engine: bytes):
        trt = self._trt
        data = bytes(serialized_engine)
        if not data.startswith(PLAN_MAGIC):
            return trt._log_error("The engine plan file is not compatible with this version of TensorRT")
        plan = json.loads(data[len(PLAN_MAGIC):])
        if plan["version"] != trt.__version__ and not plan["version_compatible"]:
            return trt._log_error(f"The engine plan file was built with TensorRT {plan['version']}, "
                                  f"this is {trt.__version__}")
        if plan["version_compatible"] and not self.engine_host_code_allowed:
            return trt._log_error("Cannot deserialize a version-compatible engine unless "
                                  "engine host code is allowed (IRuntime::setEngineHostCodeAllowed)")
        return trt._make("ICudaEngine", trt, plan, self.DLA_core if plan["dla_core"] is not None else -1)


# The surfaces number an enum's members in binding order; where a fake's behaviour reads the number, it takes the
# C++ enumerator (NvInferRuntimeBase.h; tensorrt_rtx's DataType judges it in tests/test_cuda_contract.py).
ENUMERATOR_VALUES = {"DataType": {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6,
                                  "BF16": 7, "INT64": 8, "INT4": 9, "FP4": 10, "E8M0": 11}}


def _enum(name: str, members: dict) -> type:
    values = ENUMERATOR_VALUES.get(name, {})
    return enum.IntEnum(name.rpartition(".")[2], {m: values.get(m, v) for m, v in members.items()})


def _nptype(trt):
    def nptype(trt_type):
        name = trt.DataType(trt_type).name
        if name not in NUMPY_TYPES:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return NUMPY_TYPES[name]
    return nptype


class StrictModule(types.ModuleType):
    """The module object: names outside the release's surface raise AttributeError."""

    def __getattr__(self, name: str):
        surface = self.__dict__["_surface"]
        if name in surface["module"] or name in surface["classes"] or name in surface["enums"]:
            raise FakeGap(f"fake tensorrt.{name} is not modelled")
        raise AttributeError(f"module 'tensorrt' has no attribute '{name}' (TensorRT {self.__version__})")


FAKE_CLASSES = {"Builder": Builder, "IBuilderConfig": BuilderConfig, "INetworkDefinition": Network, "ILayer": Layer,
                "ITensor": Tensor, "OnnxParser": OnnxParser, "IOptimizationProfile": OptimizationProfile,
                "ITimingCache": TimingCache, "Runtime": Runtime, "ICudaEngine": Engine,
                "IExecutionContext": ExecutionContext}


def make_tensorrt(version: str, gpu: FakeGpu, dla_cores: int = 0) -> StrictModule:
    """A fresh fake ``tensorrt`` module for ``version`` (a key of SURFACES) on ``gpu``."""
    surface = load_surface(version)
    trt = StrictModule("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch.export's trace rules look modules up
    trt._surface, trt.__version__, trt._gpu, trt._dla_cores = surface, version, gpu, dla_cores
    trt.errors = []
    for name, members in surface["enums"].items():
        if "." not in name:
            setattr(trt, name, _enum(name, members))
    for alias, member in DATATYPE_ALIASES.items():
        if alias in surface["module"]:
            setattr(trt, alias, trt.DataType[member])
    trt.nptype = _nptype(trt)
    trt.ILogger, trt.Logger = _loggers(surface)

    def log_error(message: str):
        trt.errors.append(message)
        return None

    trt._log_error = log_error
    trt._classes = {}
    for api, fake in FAKE_CLASSES.items():
        allowed = _class_attributes(surface, api)
        properties = {a for a in allowed if surface["classes"][api]["attributes"].get(a) == "property"}
        trt._classes[api] = type(api, (fake,), {"_allowed": frozenset(allowed), "_properties": frozenset(properties),
                                                "_release": version, "_trt": trt})
        setattr(trt, api, trt._classes[api])
    trt._make = lambda api, *args: trt._classes[api](*args)
    return trt


def _loggers(surface: dict):
    """``ILogger`` (subclassable, with the Severity enum exported into the class) and ``Logger``."""
    severity = _enum("ILogger.Severity", surface["enums"]["ILogger.Severity"])

    class ILogger:
        Severity = severity

        def __init__(self):
            pass

        def log(self, severity, msg):
            raise NotImplementedError

    for member in severity:
        setattr(ILogger, member.name, member)

    class Logger(ILogger):
        def __init__(self, min_severity=severity.WARNING):
            super().__init__()
            self.min_severity = severity(min_severity)

        def log(self, severity, msg):
            pass

    return ILogger, Logger


def install(monkeypatch, version: str, gpu: FakeGpu, dla_cores: int = 0) -> StrictModule:
    """Put the fake ``tensorrt`` for ``version`` in sys.modules (and hide ``tensorrt_rtx``)."""
    trt = make_tensorrt(version, gpu, dla_cores)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    return trt
