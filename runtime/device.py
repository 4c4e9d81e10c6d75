"""The CUDA device we run on (name, compute capability, CUDA versions) through cuda-python; None without a GPU."""
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


def _version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def cuda_device(index: int = 0) -> CudaDevice | None:
    """The device at ``index``, or None when cuda-python, a driver or the device is missing."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    error, props = cudart.cudaGetDeviceProperties(index)
    if error != cudart.cudaError_t.cudaSuccess:
        return None
    _, runtime_version = cudart.cudaRuntimeGetVersion()
    _, driver_version = cudart.cudaDriverGetVersion()
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
    return CudaDevice(index, name, f"{props.major}.{props.minor}", _version(runtime_version), _version(driver_version))
