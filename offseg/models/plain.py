"""The plain operators an export records, or the fused eager forms: one switch for every model part that has both.

Eager runs fold some operator chains into one kernel (talking heads and attention products as ``baddbmm``, layer-
scaled residuals and CARAFE taps as multiply-adds). An export must record the plain chain (Conv, MatMul, Mul, Add:
what ONNX, TensorRT and the INT8 rules know), and so must whatever stands in for the exported graph on the PyTorch
side: ``offseg-info`` counts MACs on it and ``offseg-fp16-check`` rounds it to FP16 (an FP16 engine rounds q @ k
before its scale and every tap's product before its sum; the fused forms do not).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

_forced = False


@contextmanager
def plain_operators():
    """Inside (also as a decorator), every model part runs its plain operators, as in an export."""
    global _forced
    previous, _forced = _forced, True
    try:
        yield
    finally:
        _forced = previous


def plain() -> bool:
    """Whether to run the plain operators here: while exporting, or inside ``plain_operators``."""
    return _forced or torch.compiler.is_exporting()
