"""benchmarks/gpu_check.py, the hardware check of the GPU path, without a GPU: its stand-in engine speaks
TensorRT's names (the surfaces extracted from NVIDIA's bindings), and without a GPU it writes a report that says so
and exits 1 instead of passing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fake_tensorrt

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import standin_tensorrt  # noqa: E402

STANDIN_CLASSES = {"Runtime": standin_tensorrt.Runtime, "ICudaEngine": standin_tensorrt.Engine,
                   "IExecutionContext": standin_tensorrt.ExecutionContext}


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_the_standin_engine_uses_only_tensorrt_names(version):
    surface = fake_tensorrt.load_surface(version)
    for api, standin in STANDIN_CLASSES.items():
        public = {name for name in vars(standin) if not name.startswith("_")} | {
            name for name in ("DLA_core", "engine_host_code_allowed") if api == "Runtime"}
        assert public <= set(surface["classes"][api]["attributes"]), (api, public - set(
            surface["classes"][api]["attributes"]))
    assert {m.name for m in standin_tensorrt.TensorIOMode} == set(surface["enums"]["TensorIOMode"])
    assert {"WARNING", "ERROR"} <= set(surface["enums"]["ILogger.Severity"])


def test_standin_plans_round_trip_and_shapes_follow_the_profile():
    plan = standin_tensorrt.plan_bytes(5, [-1, 3, -1, -1], [[1, 3, 64, 64], [1, 3, 128, 128], [2, 3, 256, 256]])
    engine = standin_tensorrt.Runtime(standin_tensorrt.Logger()).deserialize_cuda_engine(plan)
    assert engine.get_tensor_shape("logits") == [-1, 5, -1, -1]
    context = engine.create_execution_context()
    assert not context.set_input_shape("images", (3, 3, 128, 128))  # batch above the profile
    assert context.set_input_shape("images", (2, 3, 128, 64)) and context.get_tensor_shape("logits") == [2, 5, 32, 16]
    assert standin_tensorrt.Runtime(standin_tensorrt.Logger()).deserialize_cuda_engine(b"not a plan") is None
    batch = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    out = standin_tensorrt.expected_output(batch, 5)
    assert out.shape == (2, 5, 2, 2) and out[1, 2, 1, 0] == 3 * batch[1, :, 4:8, 0:4].mean()


def test_without_a_gpu_the_check_reports_failure(tmp_path):
    report = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--json", str(report),
                             "--checks", "cuda_adapter,standin_engine"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "no CUDA GPU is visible" in result.stderr
    data = json.loads(report.read_text())
    assert data["ok"] is False and set(data["checks"]) == {"cuda_adapter", "standin_engine"}
    assert data["environment"]["gpu"] is None and data["environment"]["cuda_bindings"]


def test_an_unknown_check_is_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--checks", "nope"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "unknown check(s) nope" in result.stderr


def test_the_gpu_benchmark_refuses_an_unknown_section_and_needs_a_gpu(tmp_path):
    script = str(ROOT / "benchmarks" / "gpu.py")
    unknown = subprocess.run([sys.executable, script, "--sections", "latency,nope"], capture_output=True, text=True,
                             cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown section(s) nope" in unknown.stderr
    import torch
    if not torch.cuda.is_available():
        result = subprocess.run([sys.executable, script, "--json", str(tmp_path / "g.json")], capture_output=True,
                                text=True, cwd=tmp_path)
        assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr
        assert not (tmp_path / "g.json").exists()


def test_the_gpu_benchmarks_training_and_evaluation_rows_run_on_the_cpu(capsys):
    """A smoke run of the code the GPU machine will run (its time there is scarce): every training variant but
    the compiled ones and the fused CARAFE ones (Triton's interpreter trains with it in test_carafe_fused), and the
    evaluation loop, at toy sizes on the CPU."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu
    failing = {"carafe": "no-such-form"}  # a variant that fails is a row with its error, and the next one runs
    variants = [failing] + [v for v in gpu.TRAINING_VARIANTS if v.get("carafe") != "fused" and "compile" not in v]
    rows = gpu.training_rows(1, 1, variants, device="cpu", crop=64)
    assert [(r["amp"], r["channels_last"], r["carafe"]) for r in rows] == [(False, False, "no-such-form"),
        (False, False, "taps"), (True, False, "taps"), (True, True, "taps"), (True, False, "unfold")]
    assert rows[0]["error"].startswith("ValueError: carafe: unknown form") and "it_per_s" not in rows[0]
    assert all(r["it_per_s"] > 0 for r in rows[1:])
    profiles = gpu.profile_rows("cpu", size=(64, 64), batch=1, crop=64, forms=("no-such-form", "taps"))
    assert all(row["error"].startswith("ValueError") and "top" not in row for row in profiles[:2])
    profiles = profiles[2:]
    assert [row["what"] for row in profiles] == ["forward FP32 64x64", "training step FP32 batch 1 crop 64"]
    assert all(0 < sum(op["share"] for op in row["top"]) <= 1 + 1e-9 and row["total_ms"] > 0 for row in profiles)
    assert "aten::convolution_backward" in {op["name"] for op in profiles[1]["top"]}
    evaluation = gpu.eval_rows(1, 1, runs=(("cpu", False, "taps"),), layouts=("ade20k",))
    assert evaluation[0]["protocol"] == "resize to 2048x512 keep-ratio, slide 512x512 stride 480x480"
    assert evaluation[0]["mIoU"] == evaluation[0]["mIoU_on_the_cpu_images"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ade20k", "cityscapes"])
def test_the_gpu_benchmarks_scenes_read_back_as_its_dataset(tmp_path, layout):
    import gpu
    from offseg.data import synthetic
    from offseg.data.datasets import SegmentationDataset
    gpu.write_scenes(tmp_path, layout, 2)
    dataset = SegmentationDataset(layout, tmp_path, "val")
    image, labels = dataset.load(1)
    scene, truth = synthetic.render_scene(1, *gpu.EVAL_SIZES[layout])
    assert len(dataset) == 2 and image.shape == scene.shape and np.array_equal(labels, truth)
    assert np.abs(image.astype(int) - scene).mean() < (4 if layout == "ade20k" else 1e-9)  # JPEG / PNG


def test_the_torch_eval_check_runs_on_the_cpu(tmp_path):
    """A smoke run of gpu_check's torch_eval on the CPU (no CUDA graphs there, so it cannot pass: every figure but
    the graph count must), with Triton interpreted in a fresh process."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); import gpu_check; "
            "print(json.dumps(gpu_check.check_torch_eval(Path(sys.argv[1]), device='cpu')))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert abs(report["miou_device_protocol"] - report["miou_numpy_protocol_cpu"]) < 0.01
    assert report["miou_cuda_graphs"] == report["miou_device_protocol"] and all(report["graph_replays_equal_eager"])
    assert report["graphs_kept"] == 0 and not report["ok"]
    assert report["fused_form_max_abs_diff_vs_taps"] <= 1e-4
