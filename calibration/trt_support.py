"""Is every op of an ONNX graph in TensorRT 10's ONNX-parser support list (``tensorrt_onnx_ops.json``)?"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import onnx
from onnx import numpy_helper

SUPPORT_FILE = Path(__file__).with_name("tensorrt_onnx_ops.json")


@cache
def support_table() -> dict:
    return json.loads(SUPPORT_FILE.read_text())


def _attribute(node: onnx.NodeProto, name: str):
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return None


def _zero_point_problem(node: onnx.NodeProto, initializers: dict) -> bool:
    zero_point = initializers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return zero_point is not None and bool(numpy_helper.to_array(zero_point).any())


def unsupported(model: onnx.ModelProto) -> list[str]:
    """Human-readable problems (op type or attribute value the parser does not take); empty when all is fine."""
    table = support_table()
    known, values = set(table["ops"]), table["attribute_values"]
    initializers = {i.name: i for i in model.graph.initializer}
    problems = []
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    low, high = table["opsets"]
    if not low <= opset <= high:
        problems.append(f"opset {opset} is outside TensorRT 10's range {low}-{high}")
    local = {(f.domain, f.name) for f in model.functions}
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    for node in nodes:
        if (node.domain, node.op_type) in local:
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            problems.append(f"{node.op_type} ({node.name}) is not a TensorRT ONNX-parser op")
            continue
        for name, allowed in values.get(node.op_type, {}).items():
            value = _attribute(node, name)
            if value is not None and value not in allowed:
                problems.append(f"{node.op_type} ({node.name}): {name}={value!r} is not supported")
        if node.op_type in table["zero_point_must_be_zero"] and _zero_point_problem(node, initializers):
            problems.append(f"{node.op_type} ({node.name}) has a non-zero zero point")
    return sorted(set(problems))
