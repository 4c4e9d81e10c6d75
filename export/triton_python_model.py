"""Triton Python-backend model: ONNX Runtime on the ``model.onnx`` beside it, with the I/O of its config.pbtxt.

``offseg-export --format triton --triton-backend python`` copies this file into the repository as
``<model>/1/model.py``. It serves the export on any Triton server that has the Python backend (also one without
the ONNX Runtime backend, e.g. the ``nvidia-pytriton`` wheel's), on the CUDA execution provider where ONNX Runtime
has it, else the CPU. The server's Python environment needs numpy and onnxruntime, with the numpy its Python
backend stub was built for: pytriton 0.7.0's stub with numpy 2.4 reads a request's [1, 2, 3] as [1, 1, 1] and sends
empty outputs (measured; numpy 1.26 works).
"""
import json
from pathlib import Path


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime

        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        onnx_path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        available = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = onnxruntime.InferenceSession(str(onnx_path), providers=providers)

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            output = self.session.run([self.output_name], {self.input_name: batch})[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, output)]))
        return responses

    def finalize(self):
        self.session = None
