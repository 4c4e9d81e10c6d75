"""The few CUDA calls a TensorRT engine needs (stream, device memory, pinned host memory, async copies) behind one
tiny adapter, with cuda-python (what TensorRT's samples use since 10.13; the default) or pycuda (mmdeploy-era code,
and what some Jetson images have).

The adapter's calls, and TensorRT's, must run inside ``with adapter.active():`` in the thread that makes them: a
CUDA context is current per thread, and the pipeline runs inference in its own thread.
"""
from __future__ import annotations

import ctypes
from contextlib import contextmanager

import numpy as np

from .device import CudaDevice, cuda_version, cudart_device, import_cudart
from .errors import OffsegError

BINDINGS = ("cuda-python", "pycuda")
CUDA12_PIN = "pip install 'cuda-python>=12.6,<13'"


class CudaPython:
    """cuda-python's runtime API (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6) on device 0."""

    name = "cuda-python"
    index = 0

    def __init__(self):
        self.cudart = import_cudart()
        try:
            self._check(self.cudart.cudaSetDevice(self.index), "initialising CUDA")  # creates the primary context
        except RuntimeError as error:  # cuda-python before 12.6 raises when it cannot load the driver
            raise OffsegError(f"no NVIDIA driver is installed ({error})") from None
        self.stream = self._check(self.cudart.cudaStreamCreate(), "creating a stream")

    def _check(self, result, what: str):
        error, *values = result if isinstance(result, tuple) else (result,)
        codes = self.cudart.cudaError_t
        if error == codes.cudaErrorInsufficientDriver:
            _, runtime = self.cudart.cudaRuntimeGetVersion()
            _, driver = self.cudart.cudaDriverGetVersion()
            if not driver:  # what the runtime reports when no driver is installed at all
                raise OffsegError("no NVIDIA driver is installed (CUDA reports driver version 0)")
            raise OffsegError(f"cuda-python {cuda_version(runtime)} needs a newer NVIDIA driver than this one "
                              f"(CUDA {cuda_version(driver)}): on CUDA 12 drivers (JetPack 6) {CUDA12_PIN}")
        if error != codes.cudaSuccess:
            raise OffsegError(f"CUDA error while {what}: {self.cudart.cudaGetErrorString(error)[1].decode()}")
        return values[0] if len(values) == 1 else values

    def device(self) -> CudaDevice | None:
        return cudart_device(self.cudart, self.index)

    @contextmanager
    def active(self):
        """The runtime API binds the device's primary context to whichever thread calls it."""
        self._check(self.cudart.cudaSetDevice(self.index), "selecting the GPU")
        yield

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
        """The ``cudaStream_t`` handle as an integer, what ``execute_async_v3`` takes. ``getPtr()`` would be the
        address of the Python object's handle field: used as a stream it crashed the process on an H200."""
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream), "synchronizing")

    def free(self, device: int) -> None:
        self._check(self.cudart.cudaFree(device), "freeing device memory")

    def free_host(self, host: np.ndarray) -> None:
        self._check(self.cudart.cudaFreeHost(host.ctypes.data), "freeing pinned memory")

    def close(self) -> None:
        """Destroy the stream (after the work queued on it); the adapter is unusable afterwards."""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            self._check(self.cudart.cudaStreamDestroy(stream), "destroying the stream")


class PyCuda:
    """pycuda's driver API on device 0's primary context, pushed around each use (not ``pycuda.autoinit``, whose
    context is current only in the importing thread: "invalid device context" elsewhere)."""

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as driver
        driver.init()
        self.driver = driver
        self.gpu = driver.Device(0)
        self.context = self.gpu.retain_primary_context()
        self._allocations: dict[int, object] = {}
        with self.active():
            self.stream = driver.Stream()

    def device(self) -> CudaDevice:
        major, minor = self.gpu.compute_capability()
        runtime = ".".join(map(str, self.driver.get_version()[:2]))
        return CudaDevice(0, self.gpu.name(), f"{major}.{minor}", runtime,
                          cuda_version(self.driver.get_driver_version()))

    @contextmanager
    def active(self):
        self.context.push()
        try:
            yield
        finally:
            self.driver.Context.pop()

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

    def free_host(self, host: np.ndarray) -> None:
        host.base.free()  # the array's HostAllocation

    def close(self) -> None:
        """Release the stream (pycuda destroys it when the last reference goes, in its context)."""
        if self.stream is not None:
            with self.active():
                self.stream.synchronize()
                self.stream = None


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
