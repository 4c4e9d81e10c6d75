"""TensorRT backend: a ``.plan`` engine checked against its sidecar, then run asynchronously on a CUDA stream with
pinned host buffers, I/O by tensor name, dynamic input shapes set per batch (TensorRT 10 and 11 API)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..cuda import open_cuda
from ..device import cuda_device
from ..engine_meta import check_engine
from ..errors import OffsegError
from . import ModelInfo

log = logging.getLogger(__name__)


class TensorRTBackend:
    def __init__(self, path: Path, cuda: str = "auto"):
        try:
            import tensorrt as trt
        except ImportError:
            raise OffsegError("TensorRT is not installed: pip install 'offseg-deploy[gpu]' (Jetson: JetPack's "
                              "TensorRT); or run the .onnx file with ONNX Runtime") from None
        device = cuda_device()
        sidecar = check_engine(path, trt.__version__, device.as_dict() if device else None)
        self.cuda = open_cuda(cuda)
        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise OffsegError(f"TensorRT could not deserialize {path} (built for another TensorRT or GPU?)")
        self.engine, self.context = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        profile_max = engine.get_tensor_profile_shape(self.input_name, 0)[2] if -1 in engine.get_tensor_shape(
            self.input_name) else tuple(engine.get_tensor_shape(self.input_name))
        self.info = ModelInfo.from_metadata(sidecar.get("onnx"), str(path), max_batch=int(profile_max[0]))
        self.info.check_graph(list(engine.get_tensor_shape(self.input_name)),
                              list(engine.get_tensor_shape(self.output_name)), str(path))
        self._buffers: dict[tuple, tuple] = {}
        self.description = (f"TensorRT {trt.__version__} ({sidecar['precision']}, {self.cuda.name}, "
                            f"{device.name if device else 'GPU'})")

    def _buffers_for(self, shape: tuple[int, ...]):
        """Device + pinned host buffers for an input shape (allocated once per shape)."""
        if shape not in self._buffers:
            trt = self.trt
            self.context.set_input_shape(self.input_name, shape)
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            in_dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
            out_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
            host_in = self.cuda.pinned_empty(shape, in_dtype)
            host_out = self.cuda.pinned_empty(out_shape, out_dtype)
            self._buffers[shape] = (host_in, host_out, self.cuda.device_alloc(host_in.nbytes),
                                    self.cuda.device_alloc(host_out.nbytes))
        return self._buffers[shape]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        host_in, host_out, device_in, device_out = self._buffers_for(tuple(batch.shape))
        self.context.set_input_shape(self.input_name, tuple(batch.shape))
        np.copyto(host_in, batch, casting="same_kind")
        self.cuda.to_device(device_in, host_in)
        self.context.set_tensor_address(self.input_name, device_in)
        self.context.set_tensor_address(self.output_name, device_out)
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise OffsegError("TensorRT failed to run the engine")
        self.cuda.to_host(host_out, device_out)
        self.cuda.synchronize()
        return host_out.copy()

    def close(self) -> None:
        for _, _, device_in, device_out in self._buffers.values():
            self.cuda.free(device_in)
            self.cuda.free(device_out)
        self._buffers.clear()
        self.context = self.engine = None
