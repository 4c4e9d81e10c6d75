"""OffSeg-T/B/L through ``offseg-export`` as a user runs it: the official-format reference checkpoint to FP32, FP16
and INT8 ONNX (ONNX Runtime parity on the reference inputs), every op in TensorRT's parser list, and FP32 / FP16 /
INT8 engines built by NVIDIA's TensorRT-RTX builder on this CPU machine."""
import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import reference
from export.cli import main as export_main
from calibration.trt_support import unsupported

MODELS = [pytest.param(name, marks=pytest.mark.xdist_group(name)) for name in ("offseg-t", "offseg-b", "offseg-l")]
CALIB = ["--calib-data", "synthetic", "--calib-images", "4"]


def run_export(argv):
    code = export_main(argv)
    assert code == 0, f"offseg-export {' '.join(argv)} failed"


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    """The ONNX family of one model, exported once from an official-format checkpoint."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    checkpoint = folder / "official.pth"
    torch.save({"meta": {}, "state_dict": reference.official_state_dict(name)}, checkpoint)
    run_export(["--model", name, "--checkpoint", str(checkpoint), "--input-size", "256", "256",
                "--output", str(folder / f"{name}.onnx"), "--fp16", "--int8", "--no-check", *CALIB])  # parity: below
    return name, {p: folder / f"{name}{'' if p == 'fp32' else '.' + p}.onnx" for p in ("fp32", "fp16", "int8")}


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.mark.slow
def test_fp32_onnx_matches_the_official_reference(exported):
    name, paths = exported
    expected = reference.expected(name)
    logits = run(paths["fp32"], expected["input_256x256"])
    assert np.abs(logits - expected["logits_256x256"]).max() <= 1e-4
    assert np.array_equal(logits.argmax(1), expected["logits_256x256"].argmax(1))


@pytest.mark.slow
def test_fp16_and_int8_graphs_run_and_mostly_agree(exported):
    """Random-fill weights give near-tied logits, so this bounds gross breakage only; accuracy on trained
    models is the validate command's job."""
    name, paths = exported
    expected = reference.expected(name)
    x, labels = expected["input_256x256"], expected["logits_256x256"].argmax(1)
    fp16 = run(paths["fp16"], x)
    assert fp16.dtype == np.float32 and np.isfinite(fp16).all()
    assert (fp16.argmax(1) == labels).mean() >= 0.97
    int8 = run(paths["int8"], x)
    assert np.isfinite(int8).all() and (int8.argmax(1) == labels).mean() >= 0.5


@pytest.mark.slow
def test_precision_graphs_keep_the_head_in_fp32_and_record_it(exported):
    name, paths = exported
    fp16 = onnx.load(str(paths["fp16"]))
    head = next(f for f in fp16.functions if f.name == "OffsetLearning")
    assert not any(n.op_type == "Cast" for n in head.node)  # no FP16 round trips inside the pinned head
    props = {p.key: p.value for p in fp16.metadata_props}
    assert props["offseg.precision"] == "fp16" and props["offseg.fp32_pins"].startswith("OffsetLearning")
    int8 = onnx.load(str(paths["int8"]))
    head = next(f for f in int8.functions if f.name == "OffsetLearning")
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in head.node)
    assert collections.Counter(n.op_type for n in int8.graph.node)["QuantizeLinear"] > 50


@pytest.mark.slow
def test_every_op_is_in_tensorrts_parser_list(exported):
    _, paths = exported
    for path in paths.values():
        assert unsupported(onnx.load(str(path))) == [], path.name


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_rtx_builds_an_engine_with_a_sidecar(exported, precision):
    pytest.importorskip("tensorrt_rtx")
    name, paths = exported
    flags = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", *CALIB]}[precision]
    run_export(["--onnx", str(paths["fp32"]), "--format", "engine", "--trt-module", "tensorrt_rtx", *flags])
    engine = paths["fp32"].with_name(f"{name}.{precision}.plan")
    assert engine.stat().st_size > 1_000_000
    sidecar = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert sidecar["model"] == name and sidecar["num_classes"] == 150 and sidecar["precision"] == precision
    assert sidecar["build"]["strongly_typed"] and sidecar["tensorrt"]["module"] == "tensorrt_rtx"
    assert sidecar["onnx"]["precision"] == precision and sidecar["onnx"]["input_size"] == "256 256"
