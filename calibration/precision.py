"""Which parts of an OffSeg graph stay in FP32 when the rest runs in FP16 or INT8, and the FP16 ONNX graph.

One policy serves both TensorRT generations: TensorRT 10 pins the matching layers to FP32 (layer precision
constraints); TensorRT 11 and TensorRT-RTX build strongly typed, so the FP16 ONNX graph made here already carries
those parts in FP32. Node names come from ``export.onnx`` scoping: ``OffsetLearning/...`` (the head) and
``FreqFusion<i>/...`` (the decoder's fusion stages).

Default pins, and why:
- the whole offset-learning head: the coupled logits, the softmax over up to 131k positions and the LayerNorm over
  classes are long reductions whose FP16 error changes labels;
- FreqFusion's kernel normalisation (Softmax, ReduceSum, Div) and its cosine similarity (ReduceL2, Max, Div): the
  similarity's 1e-8 epsilon underflows in FP16 at zero-padded borders;
- in the gather form (``offseg.models.freqfusion_gather``) also its unit vectors (a sum of squares as a MatMul,
  Sqrt, which overflows FP16) and its sampling corners (positions and row numbers need 24 bits), whole: their nodes
  are named ``FreqFusion<i>/unit_vectors/...`` and ``FreqFusion<i>/sampling_corners/...``.
"""
from __future__ import annotations

import fnmatch
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from runtime.errors import OffsegError

HEAD_SCOPE = "OffsetLearning"
HEAD_MODULE = "head.offset_learning"  # torch module path of the offset-learning head
FUSION_MODULE = re.compile(r"'head\.freqfusions\.(\d+)'")  # torch module paths of the FreqFusion stages
FUSION_SCOPE = "FreqFusion"
NORMALISATION_OPS = ("Softmax", "ReduceSum", "Div", "ReduceL2", "Max", "Clip", "LayerNormalization")
FUSION_FP32_PARTS = ("unit_vectors", "sampling_corners")  # gather-form submodules pinned whole


@dataclass(frozen=True)
class PinRule:
    """Nodes whose name starts with ``scope`` (shell wildcards: ``*`` any text, ``[./]`` one of those characters)
    and, if given, whose op type is in ``ops``."""

    scope: str
    ops: tuple[str, ...] = ()

    def matches(self, name: str, op_type: str) -> bool:
        wildcard = any(c in self.scope for c in "*?[")
        prefix = fnmatch.fnmatchcase(name, self.scope + "*") if wildcard else name.startswith(self.scope)
        return prefix and (not self.ops or op_type in self.ops)

    def __str__(self) -> str:
        return f"{self.scope}:{','.join(self.ops)}" if self.ops else self.scope

    @classmethod
    def parse(cls, text: str) -> PinRule:
        """``SCOPE`` or ``SCOPE:Op1,Op2`` (the CLI's ``--keep-fp32`` syntax)."""
        scope, _, ops = text.partition(":")
        if not scope:
            raise OffsegError(f"--keep-fp32 {text!r}: give a node-name prefix, optionally ':OpType,OpType'")
        return cls(scope, tuple(o for o in ops.split(",") if o))


DEFAULT_PINS = (PinRule(HEAD_SCOPE), PinRule(FUSION_SCOPE, NORMALISATION_OPS),
                *(PinRule(f"{FUSION_SCOPE}*/{part}/") for part in FUSION_FP32_PARTS))


def pinned(name: str, op_type: str, rules: tuple[PinRule, ...] = DEFAULT_PINS) -> bool:
    return any(rule.matches(name, op_type) for rule in rules)


def pinned_nodes(model, rules: tuple[PinRule, ...] = DEFAULT_PINS) -> list[str]:
    """Names of the nodes (main graph and local functions) of an ONNX model that the rules keep in FP32."""
    return [n.name for n in _all_nodes(model) if pinned(n.name, n.op_type, rules)]


def check_user_rules(model, texts: list[str], source: str) -> tuple[PinRule, ...]:
    """The ``--keep-fp32`` rules of ``texts``, parsed; OffsegError for the first that keeps no node of ``model`` (read
    from ``source``) in FP32: a mistyped rule would otherwise change nothing, silently."""
    rules = tuple(PinRule.parse(text) for text in texts)
    nodes = [(n.name, n.op_type) for n in _all_nodes(model)]
    for rule in rules:
        if not any(rule.matches(name, op_type) for name, op_type in nodes):
            example = next((name for name, _ in nodes if "." in name.split("/")[0]), "backbone.stem/...")
            raise OffsegError(f"--keep-fp32 {rule} matches no node of {source}: a rule is the start of node names, "
                              f"which begin with the module's path (e.g. {example.split('/')[0]}), optionally "
                              "':OpType,OpType'; offseg-fp16-check prints rules that match")
    return rules


def _all_nodes(model) -> list:
    return [*model.graph.node, *(n for f in model.functions for n in f.node)]


def to_fp16(model, rules: tuple[PinRule, ...] = DEFAULT_PINS):
    """FP16 copy of an inline-head ONNX model (float32 in and out), the pinned nodes kept in FP32.

    NVIDIA Model Optimizer's AutoCast does the conversion: it casts only at region borders, and also keeps in FP32
    any node whose values exceed the FP16-safe range on a reference run. (ONNX Runtime's converter round-trips
    every tensor between two FP32 nodes through FP16, which defeats the pins.)
    """
    try:
        from modelopt.onnx.autocast import configure_logging, convert_to_mixed_precision
    except ImportError as error:
        fix = ("Model Optimizer imports torch: pip install torch==2.13.0 (the CPU build is enough)"
               if error.name == "torch" else "pip install 'offseg-deploy[fp16]'")
        raise OffsegError(f"FP16 conversion needs NVIDIA Model Optimizer ({error}): {fix}") from None
    quiet = not logging.getLogger(__name__).isEnabledFor(logging.DEBUG)
    logging.getLogger("modelopt.onnx").setLevel(logging.ERROR if quiet else logging.INFO)
    configure_logging(logging.ERROR if quiet else logging.INFO)  # AutoCast resets its level on import
    if any(f.name == HEAD_SCOPE for f in model.functions):
        raise OffsegError("convert to FP16 before the head becomes a local function")
    exclude = [f"^{re.escape(name)}$" for name in pinned_nodes(model, rules)]
    with tempfile.TemporaryDirectory(prefix="offseg-fp16-") as folder:
        path = Path(folder) / "model.onnx"
        onnx.save(model, path)
        return convert_to_mixed_precision(str(path), "fp16", nodes_to_exclude=exclude, keep_io_types=True,
                                          opset=opset_of(model))


def opset_of(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
