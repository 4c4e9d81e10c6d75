"""TensorRT backend: a ``.plan`` engine checked against its sidecar, then run asynchronously on a CUDA stream with
pinned host buffers, I/O by tensor name, dynamic input shapes set per batch (TensorRT 10 and 11 API)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..cuda import open_cuda
from ..engine_meta import check_engine, describe_build, read_sidecar, sidecar_path
from ..errors import OffsegError
from ..limits import check_tensor_bytes
from . import ModelInfo

log = logging.getLogger(__name__)


class TensorRTBackend:
    def __init__(self, path: Path, cuda: str = "auto", allow_engine_host_code: bool = False):
        sidecar = read_sidecar(path) if sidecar_path(path).is_file() else None
        built = f"; {path.name} was {describe_build(sidecar)}" if sidecar else ""
        if sidecar and sidecar.get("tensorrt", {}).get("module") == "tensorrt_rtx":
            raise OffsegError(f"{path.name} was {describe_build(sidecar)}: such an engine runs only on an NVIDIA "
                              "RTX GPU through TensorRT-RTX's own runtime, which offseg-run does not drive. Run the "
                              ".onnx file with ONNX Runtime, or build the engine on the target GPU with offseg-export "
                              "--onnx MODEL.onnx --format engine --trt-module tensorrt")
        try:
            import tensorrt as trt
        except ImportError:
            raise OffsegError(f"TensorRT is not installed{built}: pip install 'offseg-deploy[gpu]' (Jetson: "
                              "JetPack's TensorRT), the same version that built the engine; or run the .onnx file "
                              "with ONNX Runtime") from None
        self.cuda = open_cuda(cuda)
        device = self.cuda.device()
        sidecar = check_engine(path, trt.__version__, device.as_dict() if device else None)
        if sidecar.get("tensorrt", {}).get("version_compatible") and not allow_engine_host_code:
            raise OffsegError(f"{path} is a version-compatible engine: it carries its own TensorRT lean runtime, code "
                              "that would run in this process. Pass --allow-engine-host-code only for an engine you "
                              "built or trust, or rebuild it here without --version-compatible")
        self.trt = trt
        self.buffers: tuple | None = None  # (shape, host_in, host_out, device_in, device_out)
        with self.cuda.active():
            self.engine = _deserialize(trt, path, sidecar, allow_engine_host_code)
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        profile_max = self.engine.get_tensor_profile_shape(self.input_name, 0)[2] if -1 in shape else shape
        self.info = ModelInfo.from_metadata(sidecar.get("onnx"), str(path), max_batch=int(profile_max[0]),
                                            precision=sidecar["precision"])
        self.info.check_graph(list(shape), list(self.engine.get_tensor_shape(self.output_name)), str(path))
        self.description = (f"TensorRT {trt.__version__} ({sidecar['precision']}, {self.cuda.name}, "
                            f"{device.name if device else 'GPU'})")

    def _buffers_for(self, shape: tuple[int, ...]) -> tuple:
        """Device + pinned host buffers for ``shape``; those of the previous shape are freed first."""
        if self.buffers is None or self.buffers[0] != shape:
            self._free_buffers()
            trt = self.trt
            if not self.context.set_input_shape(self.input_name, shape):
                raise OffsegError(f"input {shape} is outside the engine's optimization profile")
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            for name, tensor_shape in ((self.input_name, shape), (self.output_name, out_shape)):
                check_tensor_bytes(tensor_shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).itemsize,
                                   f"the engine's {name} for input {shape}")
            host_in = self.cuda.pinned_empty(shape, trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
            host_out = self.cuda.pinned_empty(out_shape, trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
            self.buffers = (shape, host_in, host_out, self.cuda.device_alloc(host_in.nbytes),
                            self.cuda.device_alloc(host_out.nbytes))
        return self.buffers[1:]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self.cuda.active():
            host_in, host_out, device_in, device_out = self._buffers_for(tuple(batch.shape))
            np.copyto(host_in, batch, casting="same_kind")
            self.cuda.to_device(device_in, host_in)
            self.context.set_tensor_address(self.input_name, device_in)
            self.context.set_tensor_address(self.output_name, device_out)
            if not self.context.execute_async_v3(self.cuda.stream_handle):
                raise OffsegError("TensorRT failed to run the engine")
            self.cuda.to_host(host_out, device_out)
            self.cuda.synchronize()
            return host_out.copy()

    def _free_buffers(self) -> None:
        if self.buffers is not None:
            _, host_in, host_out, device_in, device_out = self.buffers
            self.buffers = None
            self.cuda.free(device_in)
            self.cuda.free(device_out)
            self.cuda.free_host(host_in)
            self.cuda.free_host(host_out)

    def close(self) -> None:
        with self.cuda.active():
            self._free_buffers()
            self.context = self.engine = None
            self.cuda.close()


def _deserialize(trt, path: Path, sidecar: dict, allow_host_code: bool):
    """The engine in ``path`` on the DLA core its sidecar names; host code embedded in it (a version-compatible
    engine's lean runtime) runs only when the user allowed it, whatever the sidecar says."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if allow_host_code:
        runtime.engine_host_code_allowed = True
    if sidecar.get("dla_core") is not None:
        runtime.DLA_core = sidecar["dla_core"]  # an int >= 0: read_sidecar checks it
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        hint = "" if allow_host_code else " (a version-compatible one also needs --allow-engine-host-code)"
        raise OffsegError(f"TensorRT could not deserialize {path}: built for another TensorRT or GPU?{hint}")
    return engine
