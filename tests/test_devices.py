"""``--device auto|cpu|cuda|cuda:N`` of the PyTorch commands: the device in use is printed, a device this torch
cannot use is one sentence (exit 2), and GPU-only bench rows are skipped with the reason on a CPU machine."""
import json

import pytest
import torch

from calibration.cli import validate_main
from chain.bench import BACKENDS
from chain.cli import bench_main
from offseg import build_model
from offseg.checkpoint import save_checkpoint
from offseg.cli import eval_main
from offseg.devices import describe, torch_device
from runtime.backends import open_backend
from runtime.errors import OffsegError

SYNTHETIC_CLASSES = 9


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_model("offseg-t", SYNTHETIC_CLASSES).eval(),
                           tmp_path_factory.mktemp("devices") / "t.pth", "offseg-t")


def test_device_names():
    assert torch_device("cpu") == torch.device("cpu") and torch_device(" CPU ") == torch.device("cpu")
    assert torch_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert describe(torch.device("cpu")).startswith("cpu (")
    with pytest.raises(OffsegError, match="give auto, cpu, cuda or cuda:N"):
        torch_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the sentence of a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_one_sentence(spec):
    with pytest.raises(OffsegError, match=rf"--device {spec}: torch .* sees no CUDA GPU; use --device cpu"):
        torch_device(spec)


def test_eval_prints_its_device_and_refuses_an_unknown_one(checkpoint, tmp_path, capsys):
    assert eval_main(["--checkpoint", str(checkpoint), "--eval-images", "1", "--device", "cpu", "--json",
                      str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "evaluating offseg-t on cpu (" in out and '"device": "cpu"' in (tmp_path / "s.json").read_text()
    # how many images the scores are of: a subset says of how many, and the JSON records the count
    assert "offseg-t on synthetic val (1 image of 200, original size, whole): mIoU " in out
    assert json.loads((tmp_path / "s.json").read_text())["images"] == 1
    assert eval_main(["--checkpoint", str(checkpoint), "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device 'tpu'") and len(err.strip().splitlines()) == 1
    assert eval_main(["--checkpoint", str(checkpoint), "--device", "cpu", "--window-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --window-batch must be at least 1, got 0"
    assert eval_main(["--checkpoint", str(checkpoint), "--device", "cpu", "--window-batch", "2"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --window-batch batches the windows of slide inference, and "
                                               "synthetic's test runs whole images: add --mode slide, or drop "
                                               "--window-batch")
    assert eval_main(["--checkpoint", str(checkpoint), "--device", "cpu", "--cuda-graphs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --cuda-graphs needs a CUDA device; this run is on cpu (")
    assert len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        assert eval_main(["--checkpoint", str(checkpoint), "--device", "cpu", "--carafe", "fused"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --carafe fused runs a Triton kernel on a CUDA GPU; this run is on cpu")


def test_eval_scores_the_same_with_each_carafe_form(checkpoint, tmp_path):
    scores = {}
    for form in ("taps", "unfold"):
        assert eval_main(["--checkpoint", str(checkpoint), "--eval-images", "2", "--device", "cpu", "--carafe", form,
                          "--json", str(tmp_path / f"{form}.json")]) == 0
        scores[form] = json.loads((tmp_path / f"{form}.json").read_text())
    assert scores["unfold"]["carafe"] == "unfold"
    assert abs(scores["taps"]["mIoU"] - scores["unfold"]["mIoU"]) < 0.01


def test_eval_scores_the_same_with_slide_windows_batched_or_one_by_one(checkpoint, tmp_path):
    scores = {}
    for batch in ("1", "4"):
        assert eval_main(["--checkpoint", str(checkpoint), "--eval-images", "2", "--device", "cpu", "--mode", "slide",
                          "--window-batch", batch, "--json", str(tmp_path / f"{batch}.json")]) == 0
        scores[batch] = json.loads((tmp_path / f"{batch}.json").read_text())
    assert scores["1"]["protocol"].endswith("slide 256x256 stride 224x224")
    assert abs(scores["1"]["mIoU"] - scores["4"]["mIoU"]) < 0.01


def test_validate_takes_the_device_of_its_pytorch_side(checkpoint, tmp_path, capsys):
    assert validate_main(["--engine", str(checkpoint), "--checkpoint", str(checkpoint), "--device", "nope"]) == 2
    assert "--device 'nope'" in capsys.readouterr().err


def test_the_pytorch_backend_runs_on_the_device_it_names(checkpoint):
    backend = open_backend(checkpoint, device="cpu")
    assert "(cpu (" in backend.description
    out = backend.infer(torch.zeros(1, 3, 64, 64).numpy())
    assert out.shape == (1, SYNTHETIC_CLASSES, 16, 16)
    backend.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip reason of a machine without CUDA")
def test_gpu_bench_rows_are_skipped_with_the_reason_on_a_cpu_machine(tmp_path, capsys):
    assert {"torch-cuda", "torch-cuda-fp16", "torch-cuda-graph", "torch-compile"} <= set(BACKENDS)
    assert bench_main(["--backends", "torch,torch-cuda,torch-cuda-graph,torch-compile", "--input-size", "64", "64", "--iters", "1",
                       "--warmup", "1", "--work-dir", str(tmp_path), "--json", str(tmp_path / "b.json")]) == 0
    assert "torch-cuda needs a CUDA GPU" in capsys.readouterr().out
    report = json.loads((tmp_path / "b.json").read_text())
    assert set(report["results"]) == {"torch"}
    for row in ("torch-cuda", "torch-cuda-graph", "torch-compile"):
        assert report["skipped"][row].startswith(f"{row} needs a CUDA GPU (torch ")
