"""FP16 safety: which modules of an OffSeg overflow or lose precision in FP16, and the FP32 pins that follow.

Each module's own operations are checked in isolation: it runs in FP16 on the FP16-rounded copy of the exact inputs
it received in the FP32 pass, with its sub-modules replaced by their (rounded) FP32 outputs, so an error is charged
to the module that makes it, not to everything downstream. A module is flagged when its FP16 output is not finite,
when its FP32 output leaves FP16's range (|x| > 65504), or when its relative error (L2 norm of the difference / L2
norm of the FP32 output) exceeds the tolerance. Flagged modules become ``--keep-fp32`` rules for ``offseg-export``
(node names carry module paths, see ``export.onnx``). The whole model then runs as an FP16 engine would
(``fp16_emulation``): with nothing pinned, with the export's default pins, and with those and the flagged modules in
FP32, to show what the pins buy.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from offseg.models.fold import conv_bn_pairs
from offseg.models.plain import plain_operators
from runtime.progress import counted, progress as report_progress

from .fp16_emulation import Fp16Engine
from .precision import (FUSION_FP32_PARTS, FUSION_MODULE, FUSION_SCOPE, HEAD_MODULE, HEAD_SCOPE,
                        NORMALISATION_OPS)

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
FP16_MIN_NORMAL = float(torch.finfo(torch.float16).tiny)  # 6.1e-5: smaller values keep fewer significant bits
DEFAULT_TOLERANCE = float(torch.finfo(torch.float16).eps)  # 2^-10: twice the rounding of storing a value
# what a module raises when FP16 breaks it, e.g. gather rows computed in FP16 that point outside the map
FP16_FAILURES = (RuntimeError, IndexError)


@dataclass
class ModuleStats:
    """Worst case over the checked images of one module run alone in FP16."""

    module: str
    kind: str
    abs_max: float = 0.0  # of the FP32 output
    relative_error: float = 0.0
    subnormal_share: float = 0.0  # nonzero FP32 outputs below FP16's smallest normal
    nonfinite: bool = False
    error: str = ""  # what the module raised in FP16 (e.g. an index computed in FP16 out of range)
    reason: str = ""

    def update(self, reference: torch.Tensor, half: torch.Tensor) -> None:
        reference, result = reference.float(), half.float()
        self.abs_max = max(self.abs_max, float(reference.abs().max()) if reference.numel() else 0.0)
        if not torch.isfinite(result).all():
            self.nonfinite = True
            return
        norm = float(reference.norm())
        if norm > 0:
            self.relative_error = max(self.relative_error, float((result - reference).norm()) / norm)
        nonzero = reference[reference != 0].abs()
        if nonzero.numel():
            self.subnormal_share = max(self.subnormal_share, float((nonzero < FP16_MIN_NORMAL).float().mean()))

    def judge(self, tolerance: float) -> bool:
        if self.error:
            self.reason = f"fails in FP16: {self.error}"
        elif self.nonfinite or self.abs_max > FP16_MAX:
            self.reason = "overflow: FP16 output is not finite" if self.nonfinite else \
                f"overflow: FP32 values up to {self.abs_max:.3g} exceed FP16's {FP16_MAX:g}"
        elif self.relative_error > tolerance:
            self.reason = f"precision: relative error {self.relative_error:.2e} > {tolerance:.2g}"
            if self.subnormal_share > 0.01:
                self.reason += f" ({self.subnormal_share:.0%} of values below FP16's normal range)"
        return bool(self.reason)


@dataclass
class Fp16Report:
    images: int
    tolerance: float
    modules_checked: int
    freqfusion_form: str  # the FreqFusion form checked (``offseg.names.FREQFUSION_FORMS``)
    flagged: list[ModuleStats]
    pins: list[str]  # ``--keep-fp32`` rules
    whole_fp16: dict = field(default_factory=dict)  # label agreement / logit diff of the whole model in FP16
    whole_fp16_default: dict = field(default_factory=dict)  # the same with the export's default pins
    whole_fp16_pinned: dict = field(default_factory=dict)  # the same with the default pins and the flagged modules

    def to_json(self) -> dict:
        return {**asdict(self), "flagged": [asdict(s) for s in self.flagged]}


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _to_half(value):
    if isinstance(value, torch.Tensor):
        return value.half() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_half(item) for item in value)
    return value


def checked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that compute (containers that only hold others are skipped; so is the model itself)."""
    return {name: module for name, module in model.named_modules()
            if name and not isinstance(module, (nn.ModuleList, nn.ModuleDict))}


def _detached(value):
    """A copy that later in-place ops (``ReLU(inplace=True)``) cannot change."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(item) for item in value)
    return value


@dataclass
class _Call:
    name: str
    args: tuple
    output: object = None
    children: list = field(default_factory=list)  # the calls it made directly, in order


def _record(model: nn.Module, x: torch.Tensor) -> list[_Call]:
    """One FP32 pass; every module call with its inputs, output and direct sub-calls."""
    calls: list[_Call] = []
    stack: list[_Call] = []

    def enter(module, args, name):
        call = _Call(name, _detached(args))
        (stack[-1].children if stack else calls).append(call)
        stack.append(call)

    def leave(module, args, out, name):
        stack.pop().output = _detached(out)

    hooks = []
    for name, module in checked_modules(model).items():
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: enter(m, a, name)))
        hooks.append(module.register_forward_hook(lambda m, a, o, name=name: leave(m, a, o, name)))
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _check_call(call: _Call, half_modules: dict[str, nn.Module], stats: dict[str, ModuleStats]) -> None:
    """Run the module in FP16 with its sub-modules replaced by their (FP16-rounded) FP32 outputs, so only its
    own operations are measured; then check each sub-call the same way."""
    replays: dict[str, list] = {}
    for child in call.children:
        replays.setdefault(child.name, []).append(child.output)
    module = half_modules[call.name]
    for name in replays:
        half_modules[name].forward = lambda *a, name=name, **k: _to_half(replays[name].pop(0))
    try:
        half_output = module(*_to_half(call.args))
    except FP16_FAILURES as error:
        stats[call.name].error, half_output = str(error).splitlines()[0], None
    finally:
        for name in replays:
            del half_modules[name].forward  # back to the class's forward
    for reference, half in zip(_tensors(call.output), _tensors(half_output)):
        stats[call.name].update(reference, half)
    for child in call.children:
        _check_call(child, half_modules, stats)


def pin_unit(name: str, conv_bn: dict[str, str]) -> tuple[list[str], list[str]]:
    """The modules a pin for ``name`` covers and its ``--keep-fp32`` rules (see ``export.onnx.node_scope``): the
    head and each FreqFusion stage export under one scope, so they are pinned whole, except the gather form's parts
    with scopes of their own (``FreqFusion<i>/sampling_corners``, ``FreqFusion<i>/unit_vectors``). A convolution and
    its BatchNorm (``conv_bn``, see ``fold.conv_bn_pairs``) export as one Conv node named after the BatchNorm: they
    are pinned together, by the BatchNorm's name. The first module returned is the one the rules are named after."""
    if name == HEAD_MODULE or name.startswith(HEAD_MODULE + "."):
        return [HEAD_MODULE], [HEAD_SCOPE]
    parts = name.split(".")
    stage = ".".join(parts[:3])
    fusion = FUSION_MODULE.search(f"'{stage}'")
    if fusion:
        if len(parts) > 3 and parts[3] in FUSION_FP32_PARTS:
            return [".".join(parts[:4])], [f"{FUSION_SCOPE}{fusion.group(1)}/{parts[3]}/"]
        return [stage], [f"{FUSION_SCOPE}{fusion.group(1)}"]
    bn_to_conv = {bn: conv for conv, bn in conv_bn.items()}
    if name in conv_bn or name in bn_to_conv:
        bn = conv_bn.get(name, name)
        return [bn, bn_to_conv[bn]], [f"{bn}[./]"]
    # its own nodes ("name/...") and its children's ("name.child/..."), but the head's and the FreqFusion stages'
    # inside it export under scopes of their own
    inside = [scope for module, scope in ((HEAD_MODULE, HEAD_SCOPE), ("head.freqfusions", FUSION_SCOPE))
              if module.startswith(name + ".")]
    return [name], [f"{name}[./]", *inside]


def pin_plan(flagged: list[str], conv_bn: dict[str, str]) -> tuple[list[str], list[str]]:
    """(modules to run in FP32, ``--keep-fp32`` rules) for the flagged modules, without repeats: a module inside
    another pinned one adds neither (the outer one's rules cover its nodes)."""
    units: dict[str, tuple[list[str], list[str]]] = {}  # the module the rules are named after -> (modules, rules)
    for name in flagged:
        modules, rules = pin_unit(name, conv_bn)
        key = modules[0]
        if not any(key == m or key.startswith(m + ".") for m in units):
            units = {m: unit for m, unit in units.items() if not m.startswith(key + ".")}
            units[key] = modules, rules
    return ([module for modules, _ in units.values() for module in modules],
            [rule for _, rules in units.values() for rule in rules])


def default_pins(model: nn.Module) -> tuple[list[str], dict[str, frozenset[str]]]:
    """What ``offseg-export --fp16`` keeps in FP32 by default (``precision.DEFAULT_PINS``) in ``model``'s terms:
    (modules pinned whole, {module: ONNX op types pinned inside it})."""
    whole, by_type = [], {}
    for name, _ in model.named_modules():
        fusion = FUSION_MODULE.fullmatch(f"'{name.rpartition('.')[0]}'")
        if name == HEAD_MODULE or (fusion and name.rpartition(".")[2] in FUSION_FP32_PARTS):
            whole.append(name)
        elif FUSION_MODULE.fullmatch(f"'{name}'"):
            by_type[name] = frozenset(NORMALISATION_OPS)
    return whole, by_type


def _whole_model(model: nn.Module, inputs: list[torch.Tensor], desc: str, pinned: list[str] = (),
                 pinned_ops: dict[str, frozenset[str]] | None = None, progress: bool = False) -> dict:
    """Label agreement and max logit difference of the model computed as an FP16 engine would (``pinned`` modules
    and ``pinned_ops`` in FP32, see ``fp16_emulation``) vs FP32."""
    engine, agree, max_diff = Fp16Engine(model, pinned, pinned_ops), [], 0.0
    for x in report_progress(inputs, desc, unit="image", enabled=progress):
        reference = model(x)
        try:
            result = engine(x)
        except FP16_FAILURES as error:
            return {"finite": False, "error": str(error).splitlines()[0]}
        result = result.float()
        if not torch.isfinite(result).all():
            return {"finite": False}
        agree.append(float((reference.argmax(1) == result.argmax(1)).float().mean()))
        max_diff = max(max_diff, float((reference - result).abs().max()))
    return {"finite": True, "label_agreement_percent": round(100 * float(np.mean(agree)), 3),
            "max_logit_diff": max_diff}


@torch.no_grad()
@plain_operators()  # the exported graph's arithmetic: e.g. q @ k rounded to FP16 before its scale, as TensorRT has it
def check_fp16(model: nn.Module, inputs: list[np.ndarray], tolerance: float = DEFAULT_TOLERANCE,
               progress: bool = False, freqfusion_form: str | None = None) -> Fp16Report:
    """Check ``model`` (eval mode, FP32) on ``inputs`` ((1, 3, H, W) normalized float32 arrays) with the operators an
    export records; for an OffSeg, ``freqfusion_form`` "gather" checks the FreqFusion form exported for ONNX Runtime
    instead of the readable one."""
    if freqfusion_form == "gather":
        from offseg.models.freqfusion_gather import with_gather_fusions
        model = with_gather_fusions(model)
    model = model.float().eval()
    half_model = copy.deepcopy(model).half().eval()
    half_modules = checked_modules(half_model)
    stats = {name: ModuleStats(name, type(module).__name__) for name, module in checked_modules(model).items()}
    tensors = [torch.from_numpy(x) for x in inputs]
    for x in report_progress(tensors, "FP16 check", unit="image", enabled=progress):
        for call in _record(model, x):
            _check_call(call, half_modules, stats)
    flagged_names = sorted(name for name, s in stats.items() if s.judge(tolerance))
    flagged = sorted((stats[name] for name in flagged_names), key=lambda s: (not s.nonfinite, -s.relative_error))
    conv_bn = conv_bn_pairs(model)
    pinned_modules, rules = pin_plan(flagged_names, conv_bn)
    default_modules, default_ops = default_pins(model)
    return Fp16Report(
        images=len(tensors), tolerance=tolerance, modules_checked=len(stats),
        freqfusion_form=freqfusion_form or "taps", flagged=flagged, pins=rules,
        whole_fp16=_whole_model(model, tensors, "FP16 whole model", progress=progress),
        whole_fp16_default=_whole_model(model, tensors, "FP16 whole model, default pins", default_modules,
                                        default_ops, progress),
        whole_fp16_pinned=_whole_model(model, tensors, "FP16 whole model, pins in FP32",
                                       pin_plan(default_modules + pinned_modules, conv_bn)[0], default_ops, progress))


def describe_whole(result: dict) -> str:
    """One of ``Fp16Report``'s whole-model results in words."""
    if "error" in result:
        return f"fails ({result['error']})"
    if not result.get("finite"):
        return "non-finite outputs"
    return f"labels agree on {result['label_agreement_percent']:.2f}% of pixels, " \
           f"max logit diff {result['max_logit_diff']:.3g}"


def markdown(report: Fp16Report, model_name: str) -> str:
    """The report as a short markdown page."""
    lines = [f"# FP16 safety: {model_name}", "",
             f"{report.modules_checked} modules checked one by one on {counted(report.images, 'image')} "
             f"(relative-error tolerance {report.tolerance:.2g}; FreqFusion in the {report.freqfusion_form} form).",
             "",
             f"- whole model in FP16, nothing pinned: {describe_whole(report.whole_fp16)}",
             f"- as `offseg-export --fp16` builds it (default pins): {describe_whole(report.whole_fp16_default)}",
             f"- with the pins below in FP32 too: {describe_whole(report.whole_fp16_pinned)}", ""]
    if report.flagged:
        lines += ["| module | type | FP32 max abs | FP16 rel. error | below FP16 normal | why |",
                  "|---|---|---:|---:|---:|---|"]
        lines += [f"| `{s.module}` | {s.kind} | {s.abs_max:.3g} | {s.relative_error:.2e} | {s.subnormal_share:.1%} "
                  f"| {s.reason} |" for s in report.flagged]
        lines += ["", "Pin them when building: `offseg-export ... --fp16 "
                  + " ".join(f"--keep-fp32 '{rule}'" for rule in report.pins) + "` (`OffsetLearning` and "
                  "FreqFusion's normalisation are pinned by default)."]
    else:
        lines.append("No module needs FP32 at this tolerance.")
    return "\n".join(lines) + "\n"
