"""What a cuda-python runtime module shows without a GPU, as plain JSON data: the parameter names of the functions
``runtime.cuda`` calls, the enum members it uses, what ``int()`` and ``getPtr()`` of a ``cudaStream_t`` give, and
the shape of each call's result when no driver is present. Run on the real bindings (``python cuda_contract.py``
prints it) and on ``fake_cuda``, the two must agree."""
from __future__ import annotations

import inspect
import json
import warnings

# Every runtime function runtime/cuda.py and runtime/device.py call, with the arguments used for the no-driver probe.
CALLS = {
    "cudaSetDevice": (0,), "cudaStreamCreate": (), "cudaStreamDestroy": (0x1234,), "cudaMalloc": (16,),
    "cudaMallocHost": (16,), "cudaMemcpyAsync": (0, 0, 0, "HostToDevice", 0x1234), "cudaStreamSynchronize": (0x1234,),
    "cudaFree": (0,), "cudaFreeHost": (0,), "cudaRuntimeGetVersion": (), "cudaDriverGetVersion": (),
    "cudaGetDeviceProperties": (0,), "cudaGetErrorString": ("InsufficientDriver",),
}
ERRORS = ("cudaSuccess", "cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorInvalidValue",
          "cudaErrorInvalidDevice", "cudaErrorInvalidResourceHandle")
KINDS = ("cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost")


def _argument(cudart, value):
    if value == "HostToDevice":
        return cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    if value == "InsufficientDriver":
        return cudart.cudaError_t.cudaErrorInsufficientDriver
    return value


def _shape(value) -> str:
    """A result value's kind: an enum member by name, else its type (a version number's value varies)."""
    return f"{type(value).__name__}.{value.name}" if hasattr(value, "name") and hasattr(value, "value") \
        else type(value).__name__


def observe(cudart) -> dict:
    """The contract data of ``cudart`` (call without a GPU and without a driver)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = cudart.cudaStream_t(0x1234)
        handle, address = int(stream), stream.getPtr()
    results = {}
    for name, arguments in CALLS.items():
        try:
            result = getattr(cudart, name)(*(_argument(cudart, a) for a in arguments))
        except Exception as error:  # cuda-python before 12.6 raises when libcuda.so.1 is missing
            results[name] = [f"raises {type(error).__name__}"]
            continue
        results[name] = [_shape(v) for v in (result if isinstance(result, tuple) else (result,))]
    return {
        "parameters": {name: list(inspect.signature(getattr(cudart, name)).parameters) for name in CALLS},
        "errors": {name: int(getattr(cudart.cudaError_t, name)) for name in ERRORS},
        "memcpy_kinds": {name: int(getattr(cudart.cudaMemcpyKind, name)) for name in KINDS},
        "stream": {"int_is_the_handle": handle == 0x1234, "getPtr_is_the_handle": address == 0x1234,
                   "warnings": sorted({type(w.message).__name__ for w in caught})},
        "no_driver_results": results,
    }


if __name__ == "__main__":
    try:
        from cuda.bindings import runtime
    except ImportError:  # cuda-python before 12.6
        from cuda import cudart as runtime
    print(json.dumps(observe(runtime), sort_keys=True))
