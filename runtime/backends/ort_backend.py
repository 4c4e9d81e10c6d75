"""ONNX Runtime backend: TensorRT, CUDA or CPU execution providers, the first available in that order."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import OffsegError
from . import ModelInfo

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str], requested: list[str] | None = None) -> list[str]:
    """``requested`` (all must exist; a short name such as ``cuda`` or ``tensorrt`` stands for its provider, in any
    case) or the preferred ones that are available, in preference order."""
    if requested:
        short = {name.lower().removesuffix("executionprovider"): name for name in available}
        requested = [short.get(p.strip().lower().removesuffix("executionprovider"), p.strip()) for p in requested]
        missing = [p for p in requested if p not in available]
        if missing:
            raise OffsegError(f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(available)})")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


# ONNX Runtime 1.32 on a Q/DQ model of opset 21 or newer: QDQPropagationTransformer writes QuantizeLinear nodes with
# output_dtype INT8, QDQS8ToU8Transformer then gives them a UINT8 zero point, and the session fails to load
# ("output_dtype INT8 does not match y_zero_point type UINT8"; microsoft/onnxruntime#25526 is the same check). Without
# the propagation it loads with the same labels and, measured on OffSeg-T 256x256 INT8 on the CPU, at the same speed.
ORT_QDQ_WORKAROUND = ["QDQPropagationTransformer"]


def inference_session(path: Path, providers: list[str], options=None):
    """An ``onnxruntime.InferenceSession``, loaded past ONNX Runtime's opset-21+ Q/DQ fault (``ORT_QDQ_WORKAROUND``);
    other failures raise ONNX Runtime's own exception."""
    import onnxruntime as ort
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # ORT raises its own exception types
        if "output_dtype" not in str(error):
            raise
    log.debug("%s: loading without %s (ONNX Runtime's opset-21+ Q/DQ fault)", path, ", ".join(ORT_QDQ_WORKAROUND))
    return ort.InferenceSession(str(path), options, providers=providers, disabled_optimizers=ORT_QDQ_WORKAROUND)


class OnnxRuntimeBackend:
    def __init__(self, path: Path, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise OffsegError("ONNX Runtime is not installed: pip install 'offseg-deploy[onnx]'") from None
        chosen = choose_providers(ort.get_available_providers(), providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = inference_session(path, chosen, options)
        except Exception as error:  # ORT raises its own exception types for corrupt or unsupported files
            raise OffsegError(f"ONNX Runtime cannot load {path}: {str(error).splitlines()[0]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        model_input = self.session.get_inputs()[0]
        batch = model_input.shape[0]
        self.info = ModelInfo.from_metadata(meta, str(path), max_batch=batch if isinstance(batch, int) else None)
        self.info.check_graph(model_input.shape, self.session.get_outputs()[0].shape, str(path))
        self.input_name, self.path = model_input.name, path
        self.description = f"ONNX Runtime {ort.__version__} ({', '.join(self.session.get_providers())})"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException
        try:
            return self.session.run(None, {self.input_name: batch})[0]
        except (Fail, RuntimeException) as error:  # e.g. an output too large to allocate (a forged graph)
            raise OffsegError(f"ONNX Runtime failed to run {self.path} on {list(batch.shape)}: "
                              f"{str(error).splitlines()[0]}") from None

    def close(self) -> None:
        self.session = None
