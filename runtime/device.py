"""The CUDA device we run on (name, compute capability, CUDA versions); None without a GPU or a CUDA binding."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    compute_capability: str  # "8.7"
    cuda_runtime: str  # "12.6"
    cuda_driver: str

    def as_dict(self) -> dict:
        return asdict(self)


def module_installed(name: str) -> bool:
    """Whether ``import name`` would find a module, without importing it (a module already imported counts)."""
    import importlib.util
    import sys
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def cuda_version(code: int) -> str:
    """CUDA's integer version (12060) as text ("12.6")."""
    return f"{code // 1000}.{code % 1000 // 10}"


def import_cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-bindings 12.6+, the only one in 13), else
    ``cuda.cudart`` (cuda-python before 12.6). Raises ImportError when neither exists."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def cudart_device(cudart, index: int = 0) -> CudaDevice | None:
    """The device at ``index`` through cuda-python's runtime module; None when the driver or device is missing."""
    try:
        error, props = cudart.cudaGetDeviceProperties(index)
    except RuntimeError:  # cuda-python before 12.6 without libcuda.so.1 (no driver)
        return None
    if error != cudart.cudaError_t.cudaSuccess:
        return None
    _, runtime_version = cudart.cudaRuntimeGetVersion()
    _, driver_version = cudart.cudaDriverGetVersion()
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
    return CudaDevice(index, name, f"{props.major}.{props.minor}", cuda_version(runtime_version),
                      cuda_version(driver_version))


def cuda_device(index: int = 0) -> CudaDevice | None:
    """The device at ``index`` through cuda-python, or None when cuda-python, a driver or the device is missing."""
    try:
        cudart = import_cudart()
    except ImportError:
        return None
    return cudart_device(cudart, index)
