"""On a machine with an NVIDIA GPU and TensorRT (the self-hosted GPU runners): engines built by offseg-export run
through the runtime's TensorRT backend and match ONNX Runtime. Skipped without a GPU."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

import reference
from export.cli import main as export_main
from offseg.data.synthetic import write_video
from runtime.backends import open_backend
from runtime.cli import main as run_main

pytestmark = [pytest.mark.gpu, pytest.mark.xdist_group("gpu")]


@pytest.fixture(scope="module")
def onnx_t(tmp_path_factory):
    pytest.importorskip("tensorrt")
    folder = tmp_path_factory.mktemp("gpu")
    checkpoint = folder / "official.pth"
    torch.save({"meta": {}, "state_dict": reference.official_state_dict("offseg-t")}, checkpoint)
    path = folder / "t.onnx"
    assert export_main(["--checkpoint", str(checkpoint), "--model", "offseg-t", "--input-size", "256", "256",
                        "--output", str(path)]) == 0
    return path


# FP32 engines are built without TF32 (true FP32): ONNX Runtime's CPU result within 1e-3. With --tf32 the issue's
# emulation of TF32 on the reference input gave max |logit diff| 1.1e-2 and 99.85% label agreement; the bounds leave
# room for the GPU's own kernels.
@pytest.mark.parametrize("precision, flags, min_agreement, max_diff", [
    ("fp32", [], 0.999, 1e-3), ("fp32", ["--tf32"], 0.995, 5e-2), ("fp16", ["--fp16"], 0.99, None),
    ("int8", ["--int8", "--calib-data", "synthetic"], 0.9, None)])
@pytest.mark.parametrize("cuda", ["cuda-python", "pycuda"])
def test_engine_matches_onnxruntime(onnx_t, precision, flags, min_agreement, max_diff, cuda):
    if cuda == "pycuda":
        pytest.importorskip("pycuda")
    assert export_main(["--onnx", str(onnx_t), "--format", "engine", *flags]) == 0
    engine = open_backend(onnx_t.with_name(f"t.{precision}.plan"), cuda=cuda)
    x = reference.expected("offseg-t")["input_256x256"]
    expected = ort.InferenceSession(str(onnx_t), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    actual = engine.infer(x)
    engine.close()
    assert (actual.argmax(1) == expected.argmax(1)).mean() >= min_agreement
    if max_diff is not None:
        assert np.abs(actual - expected).max() <= max_diff


def test_offseg_run_with_an_engine(onnx_t, tmp_path):
    assert export_main(["--onnx", str(onnx_t), "--format", "engine", "--fp16"]) == 0
    video = tmp_path / "v.mp4"
    write_video(video, frames=10, height=180, width=320)
    assert run_main(["--engine", str(onnx_t.with_name("t.fp16.plan")), "--video", str(video), "--output",
                     str(tmp_path / "out.mp4"), "--no-progress"]) == 0
