"""ONNX export: ONNX Runtime (CPU) matches PyTorch; the offset-learning head is one fused unit."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import reference
from export.cli import main as export_main
from export.onnx import OnnxOptions, export_onnx
from offseg import build_model
from offseg.checkpoint import extract_state_dict, load_state
from offseg.models.offset_learning import OffsetLearning


def test_fused_head_is_exact():
    torch.manual_seed(0)
    head = OffsetLearning(150, 256).eval()
    for p in head.parameters():
        p.data.normal_(0, 0.1)
    x = 2 * torch.randn(2, 256, 24, 40)
    with torch.no_grad():
        assert (head(x) - head.fused_forward(x)).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def reference_t():
    model = build_model("offseg-t")
    load_state(model, extract_state_dict({"state_dict": reference.official_state_dict("offseg-t")}))
    return model.eval()


@pytest.fixture(scope="module")
def logits_onnx(reference_t, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "t.onnx"
    export_onnx(reference_t, "offseg-t", path, OnnxOptions(input_size=(256, 256)))
    return path


@pytest.mark.slow
def test_onnxruntime_matches_reference_logits_and_labels(logits_onnx, reference_t):
    x = reference.expected("offseg-t")["input_256x256"]
    session = ort.InferenceSession(str(logits_onnx), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": x})[0]
    assert np.abs(logits - reference.expected("offseg-t")["logits_256x256"]).max() <= 1e-4
    with torch.no_grad():
        torch_logits = reference_t(torch.from_numpy(x)).numpy()
    assert np.abs(logits - torch_logits).max() <= 1e-4
    assert np.array_equal(logits.argmax(1), torch_logits.argmax(1))


@pytest.mark.slow
def test_graph_has_the_head_as_one_local_function_and_metadata(logits_onnx):
    model = onnx.load(str(logits_onnx))
    onnx.checker.check_model(model, full_check=True)
    calls = [n for n in model.graph.node if n.domain == "offseg"]
    assert [n.op_type for n in calls] == ["OffsetLearning"]
    function = next(f for f in model.functions if f.name == "OffsetLearning")
    ops = collections.Counter(n.op_type for n in function.node)
    assert ops["LayerNormalization"] == 1 and ops["Softmax"] == 2  # fp16-sensitive parts stay single ops
    assert ops["MatMul"] == 6  # A once, class offset 2, K x K mixing 2, masks 1 (fused: no hw x C offset)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["offseg.model"] == "offseg-t" and props["offseg.num_classes"] == "150"
    assert props["offseg.input_size"] == "256 256" and props["offseg.fused_head"] == "true"


@pytest.mark.slow
def test_labels_export_with_normalization_in_the_graph(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "labels.onnx"
    assert export_main(["--num-classes", "19", "--input-size", "64", "96", "--output-kind", "labels",
                        "--fold-normalization", "--inline-head", "--output", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    model = onnx.load(str(path))
    assert not model.functions and any(n.name.startswith("OffsetLearning/") for n in model.graph.node)
    image = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 96), dtype=np.uint8)
    labels = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": image})[0]
    assert labels.dtype == np.uint8 and labels.shape == (1, 64, 96) and labels.max() < 19


@pytest.mark.parametrize("argv,message", [
    (["--input-size", "250", "256"], "multiples of 32"),
    (["--output", "/nonexistent-folder/x.onnx", "--input-size", "64", "64"], "does not exist"),
    (["--checkpoint", "missing.pth"], "missing.pth does not exist"),
])
def test_user_mistakes_give_one_clear_line(capsys, argv, message):
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_nvidia_parser_parses_and_builds_the_export(logits_onnx):
    """TensorRT for RTX parses ONNX and builds engines without a GPU: a real NVIDIA check on CPU."""
    trt = pytest.importorskip("tensorrt_rtx")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(logits_onnx))
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None and plan.nbytes > 1_000_000
