"""An FP16 engine's arithmetic on the CPU, operation by operation: what a mixed-precision build computes.

``Fp16Engine(model, pinned)`` runs every ATen operation of an FP32 model in FP16, except those run inside a pinned
module, which run in FP32, and those of the ONNX op types pinned in a module (``pinned_ops``: FreqFusion's
normalisation, see ``calibration.precision``). An operation converts the floating tensors it reads to its own
precision, as an engine's reformat layers do at a region's border, so a value passing between two FP32 operations
is never rounded to FP16 on the way, whichever modules it passes through. Conversions written in the model
(``.float()``) convert nothing by themselves: the next operation computes in its region's precision, as an FP16 ONNX
graph's converted casts do. Pinned modules keep their FP32 weights.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

REDUCED = (torch.float16, torch.float32, torch.bfloat16)  # the dtypes an operation converts
CONVERSIONS = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}  # move values, compute nothing
# torch's CPU grid_sample indexes FP16 maps with 16-bit integers (wrong past 32,767 pixels a map): sampled in FP32
# on FP16-rounded values and rounded back, as ``offseg.models.freqfusion.bilinear_border_sample`` does
SAMPLED_IN_FP32_ON_CPU = {torch.ops.aten.grid_sampler_2d.default}
# the ONNX op type torch's exporter writes for the ATen ops that pin rules name by type (tests check it on an export)
ONNX_OP_TYPES = {"_softmax": "Softmax", "sum": "ReduceSum", "div": "Div", "linalg_vector_norm": "ReduceL2",
                 "maximum": "Max", "clamp_min": "Clip", "clamp": "Clip", "native_layer_norm": "LayerNormalization"}


def _converted(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.dtype in REDUCED and value.dtype != dtype else value
    if isinstance(value, (list, tuple)):
        return type(value)(_converted(item, dtype) for item in value)
    return value


class _Fp16Arithmetic(TorchDispatchMode):
    """Runs each operation in FP16, or in FP32 while a pinned module runs (``pinned_depth`` > 0) or when its ONNX op
    type is pinned in a module that is running (``pinned_types``)."""

    def __init__(self):
        super().__init__()
        self.pinned_depth = 0
        self.pinned_types: list[frozenset[str]] = []

    def in_fp32(self, func) -> bool:
        if self.pinned_depth:
            return True
        op_type = ONNX_OP_TYPES.get(func.overloadpacket.__name__)
        return op_type is not None and any(op_type in types for types in self.pinned_types)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CONVERSIONS or func.is_view:
            return func(*args, **kwargs)
        dtype = torch.float32 if self.in_fp32(func) else torch.float16
        if func._schema.is_mutable:  # in place: computed at the operation's precision, stored at the tensor's
            target, rest = args[0], _converted(args[1:], dtype)
            if not isinstance(target, torch.Tensor) or target.dtype not in REDUCED or target.dtype == dtype:
                return func(target, *rest, **kwargs)
            return target.copy_(func(target.to(dtype), *rest, **kwargs))
        args, kwargs = _converted(args, dtype), _converted(kwargs, dtype)
        if dtype == torch.float16 and func in SAMPLED_IN_FP32_ON_CPU and args[0].device.type == "cpu":
            return func(*_converted(args, torch.float32), **kwargs).to(dtype)
        return func(*args, **kwargs)


def _read_at_weights_dtype(module: nn.Module, args: tuple) -> tuple:
    """A layer's input converted to its weights' dtype before torch's composite functions (``conv2d``) compare the
    two; the layer's first operation reads it at that precision anyway."""
    return _converted(args, next(module.parameters()).dtype)


class Fp16Engine(nn.Module):
    """A copy of an FP32 ``model`` that computes as an FP16 engine would, with the modules named in ``pinned`` (and
    everything inside them) in FP32: their weights are the FP32 ones, the others' are rounded to FP16. ``pinned_ops``
    maps a module to the ONNX op types (``ONNX_OP_TYPES``' values) that stay in FP32 inside it."""

    def __init__(self, model: nn.Module, pinned: list[str] = (), pinned_ops: dict[str, frozenset[str]] | None = None):
        super().__init__()
        self.model = copy.deepcopy(model).half()
        self.arithmetic = arithmetic = _Fp16Arithmetic()
        for name in pinned:
            parent_name, _, child = name.rpartition(".")
            fp32 = copy.deepcopy(model.get_submodule(name)).float()
            setattr(self.model.get_submodule(parent_name), child, fp32)
            fp32.register_forward_pre_hook(self._enter_pinned)
            fp32.register_forward_hook(self._leave_pinned, always_call=True)
        for name, types in (pinned_ops or {}).items():
            module = self.model.get_submodule(name)
            module.register_forward_pre_hook(lambda *_, types=frozenset(types): arithmetic.pinned_types.append(types))
            module.register_forward_hook(self._leave_pinned_types, always_call=True)
        for module in self.model.modules():
            if next(module.children(), None) is None and next(module.parameters(), None) is not None:
                module.register_forward_pre_hook(_read_at_weights_dtype)

    def _enter_pinned(self, *_):
        self.arithmetic.pinned_depth += 1

    def _leave_pinned(self, *_):
        self.arithmetic.pinned_depth -= 1

    def _leave_pinned_types(self, *_):
        self.arithmetic.pinned_types.pop()

    def forward(self, *args):
        with self.arithmetic:
            return self.model(*args)
