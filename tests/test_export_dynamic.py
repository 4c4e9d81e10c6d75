"""A dynamic-shape export (batch, height, width free) matches the official reference at two sizes and builds
a TensorRT-RTX engine with an optimization profile."""
import json

import numpy as np
import onnxruntime as ort
import pytest

import reference
from export.cli import main as export_main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dynamic")]


@pytest.mark.parametrize("size", ["256x256", "320x480"])
def test_dynamic_export_matches_the_reference_at_each_size(dynamic_onnx, size):
    expected = reference.expected("offseg-t")
    session = ort.InferenceSession(str(dynamic_onnx), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": expected[f"input_{size}"]})[0]
    assert np.abs(logits - expected[f"logits_{size}"]).max() <= 1e-4
    assert np.array_equal(logits.argmax(1), expected[f"logits_{size}"].argmax(1))


def test_dynamic_export_takes_a_batch(dynamic_onnx):
    x = reference.expected("offseg-t")["input_256x256"]
    session = ort.InferenceSession(str(dynamic_onnx), providers=["CPUExecutionProvider"])
    single = session.run(None, {"images": x})[0]
    batch = session.run(None, {"images": np.concatenate([x, x[:, :, ::-1].copy()])})[0]
    assert batch.shape[0] == 2 and np.abs(batch[:1] - single).max() <= 1e-4


def test_dynamic_engine_gets_an_optimization_profile(dynamic_onnx):
    pytest.importorskip("tensorrt_rtx")
    assert export_main(["--onnx", str(dynamic_onnx), "--format", "engine", "--trt-module", "tensorrt_rtx",
                        "--min-size", "256", "256", "--opt-size", "320", "480", "--max-size", "512", "512",
                        "--max-batch", "2"]) == 0
    sidecar = json.loads(dynamic_onnx.with_name("t.fp32.plan.json").read_text())
    assert sidecar["onnx"]["input_size"] == "dynamic"
    assert sidecar["build"]["profile_shapes"] == [[256, 256], [320, 480], [512, 512]]
    assert sidecar["build"]["max_batch"] == 2
