"""ONNX export details: the fused head is exact and one local function; labels output; user mistakes."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.cli import main as export_main
from offseg.models.offset_learning import OffsetLearning


def test_fused_head_is_exact():
    torch.manual_seed(0)
    head = OffsetLearning(150, 256).eval()
    for p in head.parameters():
        p.data.normal_(0, 0.1)
    x = 2 * torch.randn(2, 256, 24, 40)
    with torch.no_grad():
        assert (head(x) - head.fused_forward(x)).abs().max() <= 1e-4


@pytest.mark.slow
def test_graph_has_the_head_as_one_local_function_and_metadata(tmp_path, capsys):
    path = tmp_path / "t.onnx"
    assert export_main(["--input-size", "64", "64", "--output", str(path), "--no-check"]) == 0
    assert "RANDOM, UNTRAINED weights" in capsys.readouterr().err  # no checkpoint: said loudly
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    calls = [n for n in model.graph.node if n.domain == "offseg"]
    assert [n.op_type for n in calls] == ["OffsetLearning"]
    function = next(f for f in model.functions if f.name == "OffsetLearning")
    ops = collections.Counter(n.op_type for n in function.node)
    # class-major: one Transpose (the class-offset GEMM's second operand, which ORT folds into the GEMM)
    assert ops["Softmax"] == 2 and ops["Transpose"] == 1
    # A once, class offset 2, K x K mixing 1 (P_f W folded to a constant), masks 2, LayerNorm means 2;
    # fused: no hw x C feature offset
    assert ops["MatMul"] == 8 and ops["LayerNormalization"] == 0
    props = {p.key: p.value for p in model.metadata_props}
    assert props["offseg.model"] == "offseg-t" and props["offseg.num_classes"] == "150"
    assert props["offseg.input_size"] == "64 64" and props["offseg.fused_head"] == "true"
    assert props["offseg.weights"].startswith("RANDOM, UNTRAINED")
    assert props["offseg.freqfusion_form"] == "gather"  # auto, for --format onnx
    for stage in range(3):  # FreqFusion as a few large ops: no Resize, GridSample or per-tap Slice/Mul/Add
        nodes = [n for n in model.graph.node if n.name.startswith(f"FreqFusion{stage}/")]
        ops = collections.Counter(n.op_type for n in nodes)
        assert len(nodes) <= 153 and ops["Resize"] == ops["GridSample"] == 0 and ops["Slice"] <= 2, ops
        assert ops["MatMul"] == 9 and ops["Conv"] == 10
    from calibration.precision import pinned_nodes as fp32_nodes
    pinned = fp32_nodes(model)
    assert any("/sampling_corners/" in n and "floor" in n for n in pinned)  # positions and rows need 24 bits
    assert any("/unit_vectors/" in n and "sqrt" in n for n in pinned)  # the sum of squares overflows FP16
    # what offseg-fp16-check suggests for any module it checks pins nodes, and only those under the modules it pins
    # (a convolution's node is named after the BatchNorm folded into it: 95 convolutions of OffSeg-T pinned nothing)
    from calibration.fp16_safety import checked_modules, pin_unit
    from calibration.precision import PinRule, check_user_rules, pinned_nodes
    from offseg import build_model
    from offseg.models.fold import conv_bn_pairs
    offseg_t = build_model("offseg-t")
    conv_bn = conv_bn_pairs(offseg_t)
    assert len(conv_bn) == 95
    for name in checked_modules(offseg_t):
        modules, rules = pin_unit(name, conv_bn)
        check_user_rules(model, rules, "the export")  # each rule keeps some node in FP32
        if len(rules) == 1 and not rules[0][0].isupper():  # not the head or a FreqFusion stage (their scopes)
            nodes = pinned_nodes(model, tuple(PinRule.parse(rule) for rule in rules))
            assert all(any(n.startswith((m + "/", m + ".")) for m in modules) for n in nodes), name
    assert pin_unit("head", conv_bn)[1] == ["head[./]", "OffsetLearning", "FreqFusion"]  # the whole decoder
    assert props["offseg.classes"].startswith('["wall", "building"')  # 150 classes: ADE20K names


def test_export_reads_its_checkpoint_once_and_keeps_its_class_names(tmp_path, monkeypatch):
    """The default output name, the weights and the class names each read the file (0.2-0.8 s each, measured on
    a training checkpoint): now one read serves all three (the ONNX export itself is left out: it takes the
    labels it is given)."""
    import export.cli
    import offseg.checkpoint
    from offseg import build_model, save_checkpoint
    checkpoint = save_checkpoint(build_model("offseg-t", 3).eval(), tmp_path / "t.pth", "offseg-t",
                                 classes=("road", "car", "sky"))
    reads, exported = [], []
    read_file = offseg.checkpoint.read_file
    monkeypatch.setattr(offseg.checkpoint, "read_file", lambda path: reads.append(path) or read_file(path))
    monkeypatch.setattr(export.cli, "_export_torch",
                        lambda args, model, name, labels, path: exported.append((name, labels, path.name)) or {})
    monkeypatch.chdir(tmp_path)
    assert export_main(["--checkpoint", str(checkpoint), "--input-size", "64", "64", "--no-check"]) == 0
    assert reads == [checkpoint]
    assert exported == [("offseg-t", {"offseg.classes": '["road", "car", "sky"]'}, "offseg-t.onnx")]  # its name


@pytest.mark.slow
def test_labels_export_with_normalization_in_the_graph(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "labels.onnx"
    assert export_main(["--num-classes", "19", "--input-size", "64", "96", "--output-kind", "labels",
                        "--fold-normalization", "--inline-head", "--freqfusion-form", "taps",
                        "--output", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {path}" in out and "labels agree on 100.00% of pixels" in out
    assert "TensorRT 10 ONNX parser: all ops supported" in out
    model = onnx.load(str(path))
    assert not model.functions and any(n.name.startswith("OffsetLearning/") for n in model.graph.node)
    image = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 96), dtype=np.uint8)
    labels = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": image})[0]
    assert labels.dtype == np.uint8 and labels.shape == (1, 64, 96) and labels.max() < 19


@pytest.mark.parametrize("argv,message", [
    (["--input-size", "250", "256"], "multiples of 32"),
    (["--output", "/nonexistent-folder/x.onnx", "--input-size", "64", "64"], "does not exist"),
    (["--checkpoint", "missing.pth"], "missing.pth does not exist"),
    (["--onnx", "missing.onnx", "--fp16"], "--onnx missing.onnx does not exist"),
    (["--onnx", __file__, "--freqfusion-form", "taps"], "applies when exporting from PyTorch"),
    (["--onnx", __file__, "--fp16"], "not a readable ONNX model"),
    (["--int8", "--input-size", "64", "64", "--no-check", "--output", "/tmp/offseg-test-int8.onnx"],
     "--int8 needs calibration images"),
    (["--fp16", "--keep-fp32", ":Softmax"], "node-name prefix"),
    (["--opset", "17"], "opset 17 is too old"),
    (["--opset", "26"], "use 18-25"),
    (["--num-classes", "0", "--output", "/tmp/offseg-test-0.onnx"], "--num-classes must be at least 1, got 0"),
    (["--output", "model.txt"], "name the ONNX file NAME.onnx"),
    (["--output", f"{__file__}/x.onnx"], "is a file, not a folder"),
    (["--format", "engine", "--dynamic", "--max-size", "100", "100"], "multiples of 32"),
])
def test_user_mistakes_give_one_clear_line(capsys, argv, message):
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--workspace", "512"], "--workspace sets how a TensorRT engine is built, and --format onnx builds none"),
    (["--tf32", "--opt-size", "256", "256"], "--tf32, --opt-size set how a TensorRT engine is built"),
    (["--format", "deepstream", "--dla-core", "0"], "--format deepstream builds none"),
    (["--format", "triton", "--trt-module", "tensorrt_rtx"], "--trt-module sets how a TensorRT engine is built"),
    (["--max-batch", "4"], "--max-batch sets a TensorRT engine's or a Triton model's batch; --format onnx takes none"),
    (["--calib-data", "synthetic"], "--calib-data and --calib-images calibrate an --int8 build; add --int8"),
    (["--calib-images", "8"], "--calib-data and --calib-images calibrate an --int8 build"),
    (["--format", "deepstream", "--int8", "--calib-data", "synthetic"], "--format deepstream packages an FP32 or"),
    (["--format", "triton", "--fp16"], "--triton-backend onnxruntime serves the FP32 ONNX model; for --fp16 use"),
    (["--format", "triton", "--triton-backend", "python", "--int8", "--calib-data", "synthetic"],
     "--triton-backend python serves the FP32 ONNX model; for --int8 use --triton-backend tensorrt"),
    (["--onnx", "m.onnx", "--format", "engine", "--dynamic"], "--dynamic applies when exporting from PyTorch; the "
     "file given with --onnx keeps its own (its metadata says which): drop it, or export anew from --checkpoint"),
    (["--onnx", "m.onnx", "--fp16", "--input-size", "128", "128", "--opset", "18"],
     "--input-size, --opset apply when exporting from PyTorch"),
    (["--keep-fp32", "FreqFusion0"], "--keep-fp32 chooses what stays FP32 in an --fp16 or --int8 build, and this one "
     "is FP32 throughout: add --fp16 or --int8, or drop it"),
    (["--format", "deepstream", "--fp16", "--no-default-pins"], "--no-default-pins: nvinfer builds a DeepStream "
     "package's engine itself, without pins"),
    (["--format", "engine", "--max-batch", "4"], "--max-batch sets the batch and sizes a dynamic model is built for, "
     "and this export is static: export with --dynamic, or drop it"),
    (["--format", "triton", "--triton-backend", "tensorrt", "--max-batch", "4", "--opt-size", "256", "256"],
     "--max-batch, --opt-size set the batch"),
    (["--onnx", "m.onnx"], "--onnx m.onnx with --format onnx (the default) has nothing to make: add --fp16 or --int8"),
    (["--onnx", "m.onnx", "--fp16", "--int8", "--calib-data", "synthetic"], "--output names one file, and --fp16 "
     "--int8 make two (m.fp16.onnx and m.int8.onnx, named after --onnx)"),
])
def test_an_option_the_output_would_ignore_is_refused_before_the_export(tmp_path, capsys, monkeypatch, argv, message):
    """They used to be ignored: e.g. --workspace with an ONNX output, --fp16 with a Triton ONNX Runtime repository
    (it served FP32), --int8 with a DeepStream package."""
    import export.cli
    monkeypatch.setattr(export.cli, "_export_torch", lambda *_: pytest.fail("exported before the check"))
    assert export_main([*argv, "--output", str(tmp_path / ("out" if "--format" in argv else "m.onnx"))]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_profile_options_for_a_static_onnx_file_are_refused(tmp_path, capsys):
    from tiny_onnx import write_tiny_onnx
    static = write_tiny_onnx(tmp_path / "static.onnx", dynamic=False)
    assert export_main(["--onnx", str(static), "--format", "engine", "--max-batch", "2"]) == 2
    assert ("--max-batch sets the batch and sizes a dynamic model is built for, and static.onnx (input 64 64) is "
            "static") in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [static]


def test_output_names_the_one_file_made_from_an_onnx_file(tmp_path, capsys):
    """``--onnx M --fp16 --output F``: F is the FP16 file (--output was ignored: M.fp16.onnx was written)."""
    from tiny_onnx import write_tiny_onnx
    source = write_tiny_onnx(tmp_path / "m.onnx", dynamic=False)
    assert export_main(["--onnx", str(source), "--fp16", "--output", str(tmp_path / "half.onnx")]) == 0
    assert f"wrote {tmp_path / 'half.onnx'}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.onnx", "m.onnx"]


def test_a_tensorrt_triton_repository_without_tensorrt_fails_before_the_export(tmp_path, capsys, monkeypatch):
    import export.cli
    monkeypatch.setattr(export.cli, "module_installed", lambda name: False)
    monkeypatch.setattr(export.cli, "_export_torch", lambda *_: pytest.fail("exported before the TensorRT check"))
    assert export_main(["--format", "triton", "--triton-backend", "tensorrt", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed here: run this export on the GPU host" in err and not (tmp_path / "r").exists()
