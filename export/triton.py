"""A Triton Inference Server model repository: ``<model>/config.pbtxt`` and ``<model>/1/`` with the model for one
of three backends (ONNX Runtime: ``model.onnx``; TensorRT: ``model.plan``; Python: ``model.py`` running ONNX
Runtime on ``model.onnx``), the I/O names, dtypes and dims generated from the ONNX graph and the ``offseg.*``
metadata kept as config parameters (so a client rebuilds the runtime's ModelInfo from the server's config)."""
from __future__ import annotations

import json

from runtime.errors import OffsegError

TRITON_DTYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16"}  # ONNX types
BACKENDS = {  # --triton-backend: how config.pbtxt names it, the file in the version folder, where instances run
    "onnxruntime": ('platform: "onnxruntime_onnx"', "model.onnx", "KIND_GPU"),
    "tensorrt": ('platform: "tensorrt_plan"', "model.plan", "KIND_GPU"),
    "python": ('backend: "python"', "model.py", "KIND_CPU"),  # ONNX Runtime inside, CUDA where it has it
}


def _dims(value) -> tuple[str, list[int]]:
    """(Triton data type, dims with -1 for symbolic ones) of an ONNX graph input or output."""
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_DTYPES:
        raise OffsegError(f"ONNX tensor {value.name} has a data type Triton's config is not written for here")
    return TRITON_DTYPES[tensor.elem_type], [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]


def _tensor(value, dims: list[int], data_type: str) -> str:
    return f'  {{ name: "{value.name}" data_type: {data_type} dims: [ {", ".join(map(str, dims))} ] }}'


def config_text(name: str, model, meta: dict[str, str], max_batch: int, instances: int = 1,
                backend: str = "onnxruntime") -> str:
    """config.pbtxt for the ONNX ``model`` served by ``backend`` (a key of BACKENDS): with a symbolic batch,
    ``max_batch_size`` is ``max_batch`` and the batch leaves the dims (Triton adds it) and requests are batched
    dynamically; with a fixed batch, ``max_batch_size: 0`` and full dims."""
    graph_input, graph_output = model.graph.input[0], model.graph.output[0]
    (in_type, in_dims), (out_type, out_dims) = _dims(graph_input), _dims(graph_output)
    batched = in_dims[0] == -1
    runner, _, kind = BACKENDS[backend]
    lines = [f'name: "{name}"', runner, f"max_batch_size: {max_batch if batched else 0}",
             "input [", _tensor(graph_input, in_dims[1:] if batched else in_dims, in_type), "]",
             "output [", _tensor(graph_output, out_dims[1:] if batched else out_dims, out_type), "]"]
    if batched:
        lines.append("dynamic_batching { }")
    lines.append(f"instance_group [ {{ count: {instances} kind: {kind} }} ]")
    lines += [f'parameters {{ key: "{key}" value {{ string_value: {json.dumps(value, ensure_ascii=False)} }} }}'
              for key, value in sorted(meta.items())]
    return "\n".join(lines) + "\n"
