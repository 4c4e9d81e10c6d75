"""Strict fakes of the CUDA Python bindings, sharing one fake GPU (memory is real host memory behind addresses).

- cuda-python 12 (``cuda.cudart``) and 13 (``cuda.bindings.runtime``, which links the CUDA 13 runtime: on a CUDA 12
  driver every call fails with cudaErrorInsufficientDriver, as it does with no driver at all). A stream is a
  ``cudaStream_t`` whose ``int()`` is the handle; the real bindings judge this fake (tests/test_cuda_contract.py).
- pycuda: a context is current only in the thread that pushed it; every call without one fails with
  "invalid device context", as the driver API does (pycuda issue 242).

The runtime API makes the device's primary context current in whichever thread calls it, so after any cuda-python
call the fake TensorRT can run in that thread.
"""
from __future__ import annotations

import ctypes
import enum
import sys
import threading
import types
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FakeGpu:
    """One GPU: device allocations, pinned host allocations, and which threads have a context current."""

    name: str = "Orin"
    major: int = 8
    minor: int = 7
    driver_version: int = 12060  # CUDA 12.6 driver (JetPack 6)
    device: dict[int, ctypes.Array] = field(default_factory=dict)
    pinned: dict[int, ctypes.Array] = field(default_factory=dict)
    local: threading.local = field(default_factory=threading.local)
    streams: set[int] = field(default_factory=set)

    def create_stream(self) -> int:
        handle = 0x5000 + 0x10 * len(self.streams)
        while handle in self.streams:
            handle += 0x10
        self.streams.add(handle)
        return handle

    def destroy_stream(self, handle: int) -> bool:
        if handle not in self.streams:
            return False
        self.streams.discard(handle)
        return True

    def stream_alive(self, handle: int) -> bool:
        """The default stream (0) or one created and not destroyed."""
        return handle == 0 or handle in self.streams

    def allocate(self, table: dict, nbytes: int) -> int:
        buffer = ctypes.create_string_buffer(max(nbytes, 1))
        table[ctypes.addressof(buffer)] = buffer
        return ctypes.addressof(buffer)

    def contexts(self) -> list:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def context_current(self) -> bool:
        return bool(self.contexts())

    def view(self, address: int, nbytes: int, dtype, shape) -> np.ndarray:
        """The device memory at ``address`` as an array (checks the range lies in one device allocation)."""
        for start, buffer in self.device.items():
            if start <= address and address + nbytes <= start + ctypes.sizeof(buffer):
                raw = (ctypes.c_byte * nbytes).from_address(address)
                return np.frombuffer(raw, dtype=dtype).reshape(shape)
        raise ValueError(f"{address:#x}+{nbytes} is not device memory")


# ---- cuda-python -------------------------------------------------------------------------------------------------

class cudaError_t(enum.IntEnum):  # noqa: N801 (the binding's names)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStream_t:  # noqa: N801
    """A stream, as the bindings model it: ``int()`` is the handle; ``getPtr()`` the address of the object's own
    handle field (a host address, never a stream)."""

    def __init__(self, init_value=0):
        self._handle = ctypes.c_void_p(int(init_value))

    def getPtr(self) -> int:  # noqa: N802
        return ctypes.addressof(self._handle)

    def __int__(self) -> int:
        return self._handle.value or 0


def stream_handle(stream) -> int:
    """What a binding call reads from its ``stream`` argument: the handle of a cudaStream_t, or the int itself."""
    return int(stream)


@dataclass
class _Props:
    name: bytes
    major: int
    minor: int


class FakeCudart(types.ModuleType):
    """cuda-python's runtime module for a given CUDA runtime major (12 or 13). Its functions take the real
    bindings' parameter names and return tuples of the real shapes (tests/test_cuda_contract.py compares them)."""

    def __init__(self, module_name: str, gpu: FakeGpu | None, runtime_major: int, legacy: bool = False):
        super().__init__(module_name)
        self.gpu, self.runtime_version, self.legacy = gpu, runtime_major * 1000 + 60, legacy
        self.cudaError_t, self.cudaMemcpyKind, self.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
        self.freed_host: list[int] = []

    def _driver(self) -> None:
        """cuda-python before 12.6 loads libcuda.so.1 on first use and raises when there is none."""
        if self.legacy and self.gpu is None:
            raise RuntimeError("Failed to dlopen libcuda.so.1")

    def _ready(self) -> cudaError_t:
        self._driver()
        if self.gpu is None or self.runtime_version // 1000 > self.gpu.driver_version // 1000:
            return cudaError_t.cudaErrorInsufficientDriver  # no driver at all reads the same as an old one
        if not self.gpu.context_current():
            self.gpu.contexts().append("primary")  # the runtime API binds the primary context to this thread
        return cudaError_t.cudaSuccess

    def cudaGetErrorString(self, error):  # noqa: N802
        self._driver()
        return cudaError_t.cudaSuccess, error.name.encode()

    def cudaRuntimeGetVersion(self):  # noqa: N802
        return cudaError_t.cudaSuccess, self.runtime_version

    def cudaDriverGetVersion(self):  # noqa: N802
        self._driver()
        return cudaError_t.cudaSuccess, self.gpu.driver_version if self.gpu else 0

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        error = self._ready()
        if error == cudaError_t.cudaSuccess and device != 0:
            error = cudaError_t.cudaErrorInvalidDevice
        if error != cudaError_t.cudaSuccess:
            return error, None
        return error, _Props(self.gpu.name.encode() + b"\0\0", self.gpu.major, self.gpu.minor)

    def cudaSetDevice(self, device):  # noqa: N802
        error = self._ready()
        return cudaError_t.cudaErrorInvalidDevice if error == cudaError_t.cudaSuccess and device else error,

    def cudaFree(self, devPtr):  # noqa: N802, N803
        error = self._ready()
        if error == cudaError_t.cudaSuccess and devPtr:
            if self.gpu.device.pop(devPtr, None) is None:
                return cudaError_t.cudaErrorInvalidValue,
        return error,

    def cudaFreeHost(self, ptr):  # noqa: N802
        error = self._ready()
        if error == cudaError_t.cudaSuccess and self.gpu.pinned.pop(ptr, None) is None:
            return cudaError_t.cudaErrorInvalidValue,
        self.freed_host.append(ptr)
        return error,

    def cudaStreamCreate(self):  # noqa: N802
        error = self._ready()
        if error != cudaError_t.cudaSuccess:
            return error, None
        return error, cudaStream_t(self.gpu.create_stream())

    def cudaStreamDestroy(self, stream):  # noqa: N802
        error = self._ready()
        if error == cudaError_t.cudaSuccess and not self.gpu.destroy_stream(stream_handle(stream)):
            return cudaError_t.cudaErrorInvalidResourceHandle,
        return error,

    def cudaMalloc(self, size):  # noqa: N802
        error = self._ready()
        return (error, self.gpu.allocate(self.gpu.device, size)) if error == cudaError_t.cudaSuccess else (error, None)

    def cudaMallocHost(self, size):  # noqa: N802
        error = self._ready()
        return (error, self.gpu.allocate(self.gpu.pinned, size)) if error == cudaError_t.cudaSuccess else (error, None)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        error = self._ready()
        if error != cudaError_t.cudaSuccess:
            return error,
        if not self.gpu.stream_alive(stream_handle(stream)):
            return cudaError_t.cudaErrorInvalidResourceHandle,  # on a real GPU: often a crash instead
        device, host = (dst, src) if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else (src, dst)
        self.gpu.view(device, count, np.uint8, (count,))  # raises if not device memory
        ctypes.memmove(dst, src, count)
        return error,

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        error = self._ready()
        if error == cudaError_t.cudaSuccess and not self.gpu.stream_alive(stream_handle(stream)):
            return cudaError_t.cudaErrorInvalidResourceHandle,
        return error,


def install_cuda_python(monkeypatch, gpu: FakeGpu | None, major: int, legacy: bool = False) -> FakeCudart:
    """Put cuda-python ``major`` in sys.modules: 13 has only ``cuda.bindings.runtime``; 12.6+ has it and the old
    ``cuda.cudart``; ``legacy`` (before 12.6) has only ``cuda.cudart``."""
    runtime = FakeCudart("cuda.cudart" if legacy else "cuda.bindings.runtime", gpu, major, legacy)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.__path__, bindings.__path__ = [], []
    modules = {"cuda": cuda, "cuda.bindings": None if legacy else bindings,
               "cuda.bindings.runtime": None if legacy else runtime, "cuda.cudart": runtime if major < 13 else None}
    if not legacy:
        cuda.bindings, bindings.runtime = bindings, runtime
    if major < 13:
        cuda.cudart = runtime
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return runtime


# ---- pycuda ------------------------------------------------------------------------------------------------------

class LogicError(RuntimeError):
    pass


def install_pycuda(monkeypatch, gpu: FakeGpu) -> types.ModuleType:
    """Put pycuda (``pycuda.driver``, ``pycuda.autoinit``) backed by ``gpu`` in sys.modules."""
    driver = types.ModuleType("pycuda.driver")
    driver.LogicError = LogicError

    def need_context(what: str) -> None:
        if not gpu.context_current():
            raise LogicError(f"{what} failed: invalid device context")

    class Context:
        def push(self):
            gpu.contexts().append(self)

        @staticmethod
        def pop():
            if not gpu.contexts():
                raise LogicError("cuCtxPopCurrent failed: invalid device context")
            gpu.contexts().pop()

        def detach(self):
            pass

    class Device:
        def __init__(self, index: int):
            if index != 0:
                raise LogicError("cuDeviceGet failed: invalid device ordinal")

        def name(self):
            return gpu.name

        def compute_capability(self):
            return gpu.major, gpu.minor

        def retain_primary_context(self):
            return Context()

        def make_context(self):
            context = Context()
            context.push()
            return context

    class DeviceAllocation:
        def __init__(self, nbytes):
            need_context("cuMemAlloc")
            self.pointer = gpu.allocate(gpu.device, nbytes)

        def __int__(self):
            return self.pointer

        def free(self):
            need_context("cuMemFree")
            gpu.device.pop(self.pointer, None)

    class Stream:
        def __init__(self):
            need_context("cuStreamCreate")
            self.handle = gpu.create_stream()

        def synchronize(self):
            need_context("cuStreamSynchronize")

    def pagelocked_empty(shape, dtype):
        """An array whose ``base`` is the HostAllocation (``free()`` releases it), as pycuda returns."""
        need_context("cuMemHostAlloc")
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        pointer = gpu.allocate(gpu.pinned, nbytes)

        def free(allocation):
            need_context("cuMemFreeHost")
            gpu.pinned.pop(pointer)

        allocation = type("HostAllocation", (ctypes.c_byte * nbytes,), {"free": free}).from_address(pointer)
        array = np.ndarray(tuple(shape), dtype, buffer=allocation)
        assert array.base is allocation
        return array

    def memcpy_htod_async(device, host, stream):
        need_context("cuMemcpyHtoDAsync")
        ctypes.memmove(gpu.view(int(device), host.nbytes, np.uint8, (host.nbytes,)).ctypes.data,
                       host.ctypes.data, host.nbytes)

    def memcpy_dtoh_async(host, device, stream):
        need_context("cuMemcpyDtoHAsync")
        ctypes.memmove(host.ctypes.data, gpu.view(int(device), host.nbytes, np.uint8, (host.nbytes,)).ctypes.data,
                       host.nbytes)

    driver.init = lambda flags=0: None
    driver.get_version = lambda: (12, 6, 0)
    driver.get_driver_version = lambda: gpu.driver_version
    driver.Context, driver.Device, driver.Stream = Context, Device, Stream
    driver.mem_alloc = DeviceAllocation
    driver.pagelocked_empty, driver.memcpy_htod_async, driver.memcpy_dtoh_async = (
        pagelocked_empty, memcpy_htod_async, memcpy_dtoh_async)
    autoinit = types.ModuleType("pycuda.autoinit")
    autoinit.context = Device(0).make_context()  # current in the importing thread only, like the real one
    package = types.ModuleType("pycuda")
    package.__path__, package.driver, package.autoinit = [], driver, autoinit
    for name, module in {"pycuda": package, "pycuda.driver": driver, "pycuda.autoinit": autoinit}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return driver
