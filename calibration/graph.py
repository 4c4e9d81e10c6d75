"""Small ONNX graph edits: turning a named scope of nodes into a local function."""
from __future__ import annotations

import onnx
from onnx import helper

from runtime.errors import OffsegError


def rename_scope(scope: str, name: str) -> str:
    """``scope/name`` (idempotent)."""
    return name if name.startswith(f"{scope}/") else f"{scope}/{name}"


def topological_order(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes sorted so every input is produced before use (stable: keeps the given order where it can)."""
    ordered, pending, known = [], list(nodes), set(available) | {""}
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise OffsegError("graph has a cycle or an input nobody produces")
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    return ordered


def extract_function(model: onnx.ModelProto, scope: str, domain: str) -> onnx.ModelProto:
    """Replace the nodes named ``scope/...`` by one call of a new local function ``domain.scope``.

    The function's inputs are every value the scoped nodes read from outside (activations and weights); its
    outputs are the values read after it. Raises OffsegError when no node carries the scope.
    """
    graph = model.graph
    inside = [n for n in graph.node if n.name.startswith(f"{scope}/")]
    if not inside:
        raise OffsegError(f"no node of scope {scope} in the exported graph")
    produced = {o for n in inside for o in n.output}
    outside = [n for n in graph.node if not n.name.startswith(f"{scope}/")]
    read_later = {i for n in outside for i in n.input} | {o.name for o in graph.output}
    inputs = list(dict.fromkeys(i for n in inside for i in n.input if i and i not in produced))
    outputs = [o for n in inside for o in n.output if o in read_later]
    opsets = [o for o in model.opset_import if o.domain in {n.domain for n in inside}]
    function = helper.make_function(domain, scope, inputs, outputs, list(inside), opsets)
    call = helper.make_node(scope, inputs, outputs, name=scope, domain=domain)
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    nodes = topological_order(outside + [call], available)
    del graph.node[:]
    graph.node.extend(nodes)
    model.functions.append(function)
    if all(o.domain != domain for o in model.opset_import):  # an inlined export keeps its function's import
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return model
