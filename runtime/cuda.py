"""The few CUDA calls a TensorRT engine needs (stream, device memory, pinned host memory, async copies) behind one
tiny adapter, with cuda-python (what TensorRT's samples use since 10.13; the default) or pycuda (mmdeploy-era code,
and what some Jetson images have)."""
from __future__ import annotations

import ctypes

import numpy as np

from .errors import OffsegError

BINDINGS = ("cuda-python", "pycuda")


class CudaPython:
    """cuda-python's runtime API (``cuda.bindings.runtime``)."""

    name = "cuda-python"

    def __init__(self):
        from cuda.bindings import runtime as cudart
        self.cudart = cudart
        self._check(cudart.cudaFree(0), "initialising CUDA")  # creates the context
        self.stream = self._check(cudart.cudaStreamCreate(), "creating a stream")

    def _check(self, result, what: str):
        error, *values = result if isinstance(result, tuple) else (result,)
        if error != self.cudart.cudaError_t.cudaSuccess:
            raise OffsegError(f"CUDA error while {what}: {self.cudart.cudaGetErrorString(error)[1].decode()}")
        return values[0] if len(values) == 1 else values

    def device_alloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(nbytes), f"allocating {nbytes} bytes"))

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        pointer = int(self._check(self.cudart.cudaMallocHost(nbytes), "allocating pinned memory"))
        buffer = np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(pointer))
        return buffer.view(dtype).reshape(shape)

    def to_device(self, device: int, host: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes, kind, self.stream), "copying")

    def to_host(self, host: np.ndarray, device: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes, kind, self.stream), "copying")

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream), "synchronizing")

    def free(self, device: int) -> None:
        self.cudart.cudaFree(device)


class PyCuda:
    """pycuda's driver API."""

    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as driver
        self.driver = driver
        self.stream = driver.Stream()
        self._allocations: dict[int, object] = {}

    def device_alloc(self, nbytes: int) -> int:
        allocation = self.driver.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.driver.pagelocked_empty(shape, dtype)

    def to_device(self, device: int, host: np.ndarray) -> None:
        self.driver.memcpy_htod_async(device, host, self.stream)

    def to_host(self, host: np.ndarray, device: int) -> None:
        self.driver.memcpy_dtoh_async(host, device, self.stream)

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def synchronize(self) -> None:
        self.stream.synchronize()

    def free(self, device: int) -> None:
        allocation = self._allocations.pop(device, None)
        if allocation is not None:
            allocation.free()


def open_cuda(binding: str = "auto"):
    """The CUDA adapter: ``cuda-python`` (default), ``pycuda``, or ``auto`` (cuda-python, else pycuda)."""
    if binding not in ("auto", *BINDINGS):
        raise OffsegError(f"CUDA binding must be auto, cuda-python or pycuda, not {binding!r}")
    candidates = BINDINGS if binding == "auto" else (binding,)
    reasons = []
    for name in candidates:
        try:
            return (CudaPython if name == "cuda-python" else PyCuda)()
        except ImportError as error:
            reasons.append(f"{name} is not installed ({error.name})")
        except OffsegError as error:
            reasons.append(f"{name}: {error}")
        except Exception as error:  # pycuda raises its own errors without a driver
            reasons.append(f"{name}: {type(error).__name__}: {error}")
    raise OffsegError("no usable CUDA binding: " + "; ".join(reasons)
                      + " (pip install 'offseg-deploy[gpu]' for cuda-python, or use an .onnx file on CPU)")
