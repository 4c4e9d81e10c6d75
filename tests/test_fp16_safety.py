"""offseg-fp16-check: modules are judged on their own operations, overflow and precision loss are told apart, and
the suggested pins are what the export's node names and the default policy understand."""
import collections
import copy
import json

import pytest
import torch
from torch import nn

from aten_calls import RecordedCalls
from calibration.cli import fp16_check_main
from calibration.fp16_emulation import ONNX_OP_TYPES, Fp16Engine
from calibration.fp16_safety import check_fp16, default_pins, pin_plan
from calibration.precision import PinRule
from offseg import build_model, save_checkpoint
from offseg.models.plain import plain_operators


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class Cancel(nn.Module):
    """x + 3000 - 3000: FP16 keeps only 2-unit steps at 3000, so small x lose their digits."""

    def forward(self, x):
        return (x + 3000.0) - 3000.0


def toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), Scale(1e5), Scale(1e-5), Cancel()).eval()


def test_overflow_and_precision_loss_are_charged_to_the_modules_that_cause_them():
    inputs = [torch.randn(1, 3, 8, 8).numpy() for _ in range(2)]
    report = check_fp16(toy_model(), inputs)
    reasons = {s.module: s.reason for s in report.flagged}
    # the conv and the container are fine; the rescale cannot take its (FP16-overflowing) input in FP16 either
    assert set(reasons) == {"1", "2", "3"}
    assert reasons["1"].startswith("overflow") and reasons["2"].startswith("overflow")
    assert reasons["3"].startswith("precision")
    assert report.modules_checked == 4
    assert report.whole_fp16 == {"finite": False}  # 1e5 * x overflows FP16
    assert report.whole_fp16_pinned["finite"] and report.whole_fp16_pinned["label_agreement_percent"] > 99
    assert report.pins == ["1[./]", "2[./]", "3[./]"]


class Through(nn.Module):
    """A parent that only hands its input to its child, as the head hands the backbone's output to its first conv."""

    def __init__(self, child):
        super().__init__()
        self.child = child

    def forward(self, x):
        return self.child(x)


def test_a_value_between_two_pinned_modules_is_not_rounded_by_an_unpinned_parent():
    """An engine converts a tensor where an FP16 layer reads it; no layer of the parent reads 1e5 * x here."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Scale(1e5), Through(Scale(1e-5)), Cancel()).eval()
    report = check_fp16(model, [torch.randn(1, 3, 8, 8).numpy()])
    assert {s.module for s in report.flagged} == {"1", "2.child", "3"}  # the parent computes nothing
    assert report.whole_fp16 == {"finite": False}
    assert report.whole_fp16_pinned["finite"] and report.whole_fp16_pinned["max_logit_diff"] < 1e-2  # the conv in FP16


def test_the_emulation_runs_each_operation_in_its_precision():
    """FP16 layers read FP16-rounded weights and inputs; a pinned layer its FP32 weights and the FP16 value
    converted, not a copy of the model rounded to FP16 and back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Through(nn.Conv2d(4, 4, 1))).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        half, mixed = Fp16Engine(model)(x), Fp16Engine(model, ["1.child"])(x)
        first_in_fp16 = copy.deepcopy(model[0]).half()(x.half())
        expected_mixed = model[1](first_in_fp16.float())
        expected_half = copy.deepcopy(model[1]).half()(first_in_fp16)
    assert half.dtype == torch.float16 and torch.equal(half, expected_half)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, expected_mixed)


class ScaledInPlace(Through):
    def forward(self, x):
        return self.child(x).mul_(3.0001)


def test_an_in_place_operation_computes_at_its_precision_and_keeps_the_tensor_dtype():
    torch.manual_seed(0)
    model = ScaledInPlace(nn.Conv2d(3, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        result = Fp16Engine(model, ["child"])(x)  # the FP32 conv's output, scaled in FP16 in place
        expected = model.child(x).half().mul_(3.0001).float()
    assert result.dtype == torch.float32 and torch.equal(result, expected)


def test_the_emulated_offseg_is_the_fp16_model_unpinned_and_the_fp32_one_all_pinned():
    """Unpinned, every operation of OffSeg-T runs in FP16 (bit-equal to the model converted to FP16, whose CPU
    sampler samples FP16 maps in FP32 too); with every module pinned, nothing is rounded."""
    torch.manual_seed(0)
    model = build_model("offseg-t", 9).eval()
    x = torch.randn(1, 3, 64, 96)
    everything = [name for name, _ in model.named_children()]
    with torch.no_grad():
        half = copy.deepcopy(model).half()(x.half())
        assert torch.equal(Fp16Engine(model)(x), half)
        assert torch.equal(Fp16Engine(model, everything)(x), model(x))


def test_the_default_pins_keep_in_fp32_the_operations_the_export_pins(tmp_path):
    """FreqFusion's normalisation is pinned by ONNX op type: the emulation keeps in FP32 as many operations of each
    pinned type in each stage as the exported graph has pinned nodes (so ``ONNX_OP_TYPES`` names the right ops)."""
    import onnx
    from calibration.precision import FUSION_SCOPE, NORMALISATION_OPS, pinned
    from export.onnx import OnnxOptions, export_onnx
    torch.manual_seed(0)
    model = build_model("offseg-t", 9).eval()
    export_onnx(model, "offseg-t", tmp_path / "t.onnx",
                OnnxOptions(input_size=(64, 64), freqfusion_form="taps", head_as_function=False))
    exported = collections.Counter(
        (node.name.split("/")[0], node.op_type) for node in onnx.load(tmp_path / "t.onnx").graph.node
        if node.name.startswith(FUSION_SCOPE) and node.op_type in NORMALISATION_OPS and pinned(node.name, node.op_type))
    engine = Fp16Engine(model, *default_pins(model))
    emulated, stages = collections.Counter(), {}
    for i, fusion in enumerate(engine.model.head.freqfusions):
        fusion.register_forward_pre_hook(lambda *_, i=i: stages.update(current=f"{FUSION_SCOPE}{i}"))
    decide = engine.arithmetic.in_fp32

    def recorded(func):
        if decide(func) and not engine.arithmetic.pinned_depth:
            emulated[stages["current"], ONNX_OP_TYPES[func.overloadpacket.__name__]] += 1
        return decide(func)

    engine.arithmetic.in_fp32 = recorded
    with torch.no_grad(), plain_operators():
        engine(torch.randn(1, 3, 64, 64))
    assert emulated == exported and len(exported) == 15  # 3 stages x Softmax, ReduceSum, Div, ReduceL2, Clip


def test_pins_follow_the_export_scopes():
    conv_bn = {"backbone.stem.conv1": "backbone.stem.bn1"}
    modules, rules = pin_plan(["backbone.stages.1.blocks.0.mlp", "head.freqfusions.2.dysampler",
                               "head.freqfusions.2.lowpass", "head.offset_learning.mask_norm"], conv_bn)
    assert modules == ["backbone.stages.1.blocks.0.mlp", "head.freqfusions.2", "head.offset_learning"]
    assert rules == ["backbone.stages.1.blocks.0.mlp[./]", "FreqFusion2", "OffsetLearning"]
    # a convolution and its BatchNorm are one Conv node, named after the BatchNorm: pinned together, either flagged
    for flagged in (["backbone.stem.conv1"], ["backbone.stem.bn1"], ["backbone.stem.bn1", "backbone.stem.conv1"]):
        assert pin_plan(flagged, conv_bn) == (["backbone.stem.bn1", "backbone.stem.conv1"], ["backbone.stem.bn1[./]"])
    rule = PinRule.parse("backbone.stages.2.blocks.1[./]")
    assert rule.matches("backbone.stages.2.blocks.1/node_add", "Add")
    assert rule.matches("backbone.stages.2.blocks.1.mlp/x", "Conv")
    assert not rule.matches("backbone.stages.2.blocks.10/node_add", "Add")
    # the gather form's parts with scopes of their own are pinned alone, as the default pins do
    modules, rules = pin_plan(["head.freqfusions.1.sampling_corners", "head.freqfusions.0.unit_vectors"], conv_bn)
    assert modules == ["head.freqfusions.1.sampling_corners", "head.freqfusions.0.unit_vectors"]
    assert rules == ["FreqFusion1/sampling_corners/", "FreqFusion0/unit_vectors/"]


@pytest.mark.parametrize("flagged", [["backbone", "backbone.stages.3", "backbone.stages.3.blocks.4.mlp"],
                                     ["backbone.stages.3.blocks.4.mlp", "backbone.stages.3", "backbone"]])
def test_modules_inside_a_pinned_one_add_no_rules_of_their_own(flagged):
    """An overflow that reaches the backbone's output flags the backbone and everything on the way: 'backbone[./]'
    covers them (OffSeg-T's reference weights at 1024x2048 got 53 rules; 11 cover the same modules)."""
    modules, rules = pin_plan(flagged + ["head.freqfusions.1.dysampler"], {})
    assert modules == ["backbone", "head.freqfusions.1"]
    assert rules == ["backbone[./]", "FreqFusion1"]


def test_the_gather_form_is_checked_and_its_sampling_rows_need_fp32():
    torch.manual_seed(0)
    inputs = [torch.randn(1, 3, 128, 128).numpy()]
    report = check_fp16(build_model("offseg-t", 9).eval(), inputs, freqfusion_form="gather")
    assert report.freqfusion_form == "gather"
    # rows of up to h*w*4*groups need 24 bits. The module computes them in FP32 whatever its input, but an FP16
    # engine converts that arithmetic too (as AutoCast does the ONNX graph's), and its rows point outside the map
    assert report.whole_fp16 == {"finite": False, "error": "index out of range in self"}
    assert report.whole_fp16_default["finite"]  # the export pins them by default
    flagged = {s.module for s in report.flagged}
    assert {f"head.freqfusions.{i}.sampling_corners" for i in range(3)} <= flagged
    assert all(f"FreqFusion{i}/sampling_corners/" in report.pins for i in range(3))
    assert report.whole_fp16_pinned["finite"] and report.whole_fp16_pinned["label_agreement_percent"] > 95


def test_the_check_runs_the_operators_an_export_records():
    """Not the eager forms that fold operator chains into one kernel (and so never round q @ k to FP16 before its
    scale, or a CARAFE tap's product before its sum, as an FP16 engine does)."""
    torch.manual_seed(0)
    with RecordedCalls() as recorder:
        check_fp16(build_model("offseg-t", 9).eval(), [torch.randn(1, 3, 64, 64).numpy()])
    assert any(call.startswith("aten.bmm") for call in recorder.calls)
    assert not any(call.startswith(("aten.baddbmm", "aten.addcmul")) for call in recorder.calls)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_model("offseg-t", 9).eval(), tmp_path_factory.mktemp("fp16") / "t.pth", "offseg-t")


def test_cli_writes_the_report_and_suggests_flags(checkpoint, tmp_path, capsys):
    assert fp16_check_main(["--checkpoint", str(checkpoint), "--calib-images", "1", "--input-size", "128", "128",
                            "--tolerance", "0.0005", "--report", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    report = json.loads((tmp_path / "r" / "fp16_safety.json").read_text())
    assert report["images"] == 1 and report["modules_checked"] > 300
    assert all(f"FP16 whole model{run}: 1/1" in err for run in ("", ", default pins", ", pins in FP32"))  # progress
    assert f"{len(report['flagged'])} need FP32" in out and "checked on 1 image at 128x128" in out
    assert all(f"--keep-fp32 '{rule}'" in out for rule in report["pins"])
    markdown = (tmp_path / "r" / "fp16_safety.md").read_text()
    assert all(f"`{s['module']}`" in markdown for s in report["flagged"])
    assert report["freqfusion_form"] == "taps" and "FreqFusion taps form" in out  # auto: what engines get


def test_a_report_that_cannot_be_written_comes_after_the_result(checkpoint, tmp_path, capsys, monkeypatch):
    from runtime import sinks
    from runtime.errors import OffsegError

    def full(path, data):
        raise OffsegError(f"cannot write {path}: the disk is full")
    monkeypatch.setattr(sinks, "write_file", full)
    assert fp16_check_main(["--checkpoint", str(checkpoint), "--calib-images", "1", "--input-size", "64", "64",
                            "--report", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert "need FP32" in out and "whole model in FP16" in out and "wrote" not in out
    assert f"error: cannot write {tmp_path / 'r' / 'fp16_safety.json'}: the disk is full" in err


@pytest.mark.parametrize("argv, message", [
    (["--input-size", "100", "100"], "positive multiples of 32"),
    (["--calib-images", "0"], "--calib-images must be at least 1"),
    (["--calib-data", "missing-folder"], "does not exist"),
    (["--tolerance", "-1"], "--tolerance must be a relative error above 0, e.g. 0.001, got -1"),
    (["--tolerance", "nan"], "--tolerance must be a relative error above 0, e.g. 0.001, got nan"),
    (["--tolerance", "0"], "--tolerance must be a relative error above 0, e.g. 0.001, got 0"),
])
def test_user_mistakes_give_one_clear_line(checkpoint, capsys, argv, message):
    assert fp16_check_main(["--checkpoint", str(checkpoint), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
