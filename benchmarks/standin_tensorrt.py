"""A stand-in for the ``tensorrt`` module on a GPU machine without TensorRT: the few calls
``runtime.backends.trt_backend`` makes, with TensorRT's names, and an engine that does real CUDA work (a CuPy
kernel) on exactly the stream handle and tensor addresses it is given. A wrong stream, address, shape or a missing
synchronisation shows as a crash or a wrong output, as with a real engine.

The engine computes, per class k, (k + 1) x the channel mean of the input, average-pooled by 4 (what the fake
TensorRT of the CPU tests computes), after a delay of ``SPIN_NS`` on the GPU so an unsynchronised read sees zeros.
Plans are ``MAGIC`` + JSON: input/output names, the input's dims (-1 = dynamic), the profile and the class count.
"""
from __future__ import annotations

import enum
import json

import numpy as np

__version__ = "0.0.0-standin"
MAGIC = b"offseg-standin-plan\n"
SPIN_NS = 2_000_000

KERNEL = r"""
extern "C" __global__ void standin(const float* x, float* y, long long n, long long k, long long h, long long w,
                                   long long spin_ns) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n * k * h * w) return;
    for (long long t = 0; t < spin_ns; t += 100000) __nanosleep(100000);
    long long col = i % w, row = (i / w) % h, cls = (i / (w * h)) % k, b = i / (w * h * k);
    long long H = h * 4, W = w * 4;
    float sum = 0.f;
    for (int c = 0; c < 3; ++c)
        for (int dy = 0; dy < 4; ++dy)
            for (int dx = 0; dx < 4; ++dx)
                sum += x[((b * 3 + c) * H + row * 4 + dy) * W + col * 4 + dx];
    y[i] = (cls + 1) * sum / 48.f;
}
"""


def expected_output(batch: np.ndarray, num_classes: int) -> np.ndarray:
    """What the stand-in engine computes for ``batch`` (N, 3, H, W), on the CPU."""
    n, _, height, width = batch.shape
    pooled = batch.astype(np.float32).reshape(n, 3, height // 4, 4, width // 4, 4).mean((1, 3, 5))
    return pooled[:, None] * np.arange(1, num_classes + 1, dtype=np.float32)[None, :, None, None]


def plan_bytes(num_classes: int, dims: list[int], profile: list[list[int]] | None = None) -> bytes:
    """A stand-in plan: ``dims`` of the input (N, 3, H, W; -1 = dynamic) and, if dynamic, its (min, opt, max)."""
    return MAGIC + json.dumps({"classes": num_classes, "dims": dims, "profile": profile}).encode()


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0


def nptype(data_type) -> type:
    return {DataType.FLOAT: np.float32}[data_type]


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = WARNING):
        self.min_severity = min_severity


class Runtime:
    def __init__(self, logger: Logger):
        self.logger, self.DLA_core, self.engine_host_code_allowed = logger, -1, False

    def deserialize_cuda_engine(self, serialized_engine: bytes):
        data = bytes(serialized_engine)
        return Engine(json.loads(data[len(MAGIC):])) if data.startswith(MAGIC) else None


class Engine:
    num_io_tensors = 2

    def __init__(self, plan: dict):
        self.plan = plan

    def get_tensor_name(self, index: int) -> str:
        return ("images", "logits")[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return {"images": TensorIOMode.INPUT, "logits": TensorIOMode.OUTPUT}[name]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_shape(self, name: str) -> list[int]:
        n, _, h, w = self.plan["dims"]
        return list(self.plan["dims"]) if name == "images" else [n, self.plan["classes"], _quarter(h), _quarter(w)]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[list[int]]:
        if profile_index != 0 or name != "images" or not self.plan["profile"]:
            raise RuntimeError("no optimization profile for this tensor")
        return self.plan["profile"]

    def create_execution_context(self):
        return ExecutionContext(self)


class ExecutionContext:
    def __init__(self, engine: Engine):
        self.engine, self.shape, self.addresses = engine, None, {}

    def set_input_shape(self, name: str, shape) -> bool:
        shape = [int(d) for d in shape]
        dims, profile = self.engine.plan["dims"], self.engine.plan["profile"]
        if len(shape) != 4 or any(d > 0 and d != s for d, s in zip(dims, shape)):
            return False
        if profile and any(not lo <= s <= hi for lo, s, hi in zip(profile[0], shape, profile[2])):
            return False
        self.shape = shape
        return True

    def get_tensor_shape(self, name: str) -> list[int]:
        if self.shape is None:
            return self.engine.get_tensor_shape(name)
        n, _, h, w = self.shape
        return list(self.shape) if name == "images" else [n, self.engine.plan["classes"], h // 4, w // 4]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(memory, int):
            raise TypeError("set_tensor_address(): incompatible function arguments")
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        import cupy
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3(): incompatible function arguments")
        if self.shape is None or set(self.addresses) != {"images", "logits"}:
            return False
        n, _, h, w = self.shape
        k = self.engine.plan["classes"]
        total = n * k * (h // 4) * (w // 4)
        with cupy.cuda.ExternalStream(stream_handle):
            kernel = cupy.RawKernel(KERNEL, "standin")
            kernel(((total + 255) // 256,), (256,), (
                _device_array(self.addresses["images"], n * 3 * h * w), _device_array(self.addresses["logits"], total),
                np.int64(n), np.int64(k), np.int64(h // 4), np.int64(w // 4), np.int64(SPIN_NS)))
        return True


def _device_array(address: int, count: int):
    """``count`` float32 values at a device ``address`` we do not own, as a CuPy array."""
    import cupy
    memory = cupy.cuda.UnownedMemory(address, count * 4, owner=None)
    return cupy.ndarray((count,), cupy.float32, cupy.cuda.MemoryPointer(memory, 0))


def _quarter(dim: int) -> int:
    return dim // 4 if dim > 0 else -1
