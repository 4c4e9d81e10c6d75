"""The README's main job in its reduced (CI) size, end to end: train on synthetic scenes -> export -> INT8 -> run on
a video -> validate -> report; then calibration and validation commands on the model it trained."""
import json
import re
import shutil
import signal
import time
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from calibration.cli import calibrate_main, validate_main
from calibration.trt_support import unsupported
from chain import demo as demo_steps
from chain.cli import demo_main
from chain.demo import DemoConfig
from offseg.data.datasets import SegmentationDataset
from runtime.errors import OffsegError
from runtime.metrics import ConfusionMatrix

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain")]


def majority_class_miou(images: int) -> float:
    """mIoU (%) of always predicting the most frequent class of the validation scenes: the chance level."""
    dataset = SegmentationDataset("synthetic", None, "val")
    labels = np.stack([dataset.load(i)[1] for i in range(images)])
    confusion = ConfusionMatrix(dataset.num_classes)
    confusion.update(np.full_like(labels, np.bincount(labels.ravel()).argmax()), labels)
    return 100 * confusion.scores().miou


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The quick demo run as a user runs it, its output going to a log file (not a terminal)."""
    workdir = tmp_path_factory.mktemp("demo")
    log = workdir.parent / "demo.log"
    with log.open("w") as stream:
        code = subprocess.run([str(Path(sys.executable).with_name("offseg-demo")), "--quick", "--work-dir",
                               str(workdir)], stdout=stream, stderr=subprocess.STDOUT).returncode
    return workdir, code, log.read_text()


def test_demo_log_says_what_it_does_with_an_estimate_and_no_redraws(demo):
    _, _, log = demo
    assert "\r" not in log and "Traceback" not in log and "Warning" not in log
    assert "torchvision is not installed" not in log  # the exporter's notices stay hidden without --debug
    assert "[1/7] model: training" in log and "checkpoints: latest.pth" in log and "MB of disk" in log
    assert "training offseg-t:" in log and "expected duration" in log  # measured after the first iterations
    assert "[7/7] offseg-validate" in log and "| ONNX FP32 | fp32 |" in log
    counters = re.findall(r"^\[(\d+)/(\d+)\]", log, re.M)
    assert [int(i) for i, _ in counters] == list(range(1, 8)) and {n for _, n in counters} == {"7"}  # one counter
    assert "Ctrl-C stops cleanly; the same command continues" in log.splitlines()[0]
    assert "--accumulate" not in log and "--resume" not in log  # no advice the demo does not take
    assert "the mIoU printed at the end of training is the same model on the same 12 scenes" in log


def test_demo_writes_the_table_videos_and_reports(demo):
    workdir, code, _ = demo
    rows = json.loads((workdir / "report.json").read_text())
    assert [r["artifact"] for r in rows] == ["ONNX FP32", "ONNX INT8 (Q/DQ)"]
    fp32, int8 = rows
    assert abs(fp32["delta"]) <= 0.1 and fp32["agreement"] >= 99.9  # ONNX FP32 = PyTorch
    assert int8["precision"] == "int8" and int8["fps"] > 0
    assert code == (0 if all(r["within_bound"] for r in rows) else 1)
    chance = majority_class_miou(12)
    assert fp32["pytorch_miou"] >= max(3 * chance, 10)  # the short CPU training clearly learned something
    for row in rows:
        capture = cv2.VideoCapture(str(workdir / row["video"]))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
        assert (workdir / row["report"]).is_file()
    assert (workdir / "validation-model" / "sample_0.png").is_file()
    assert "| ONNX FP32 | fp32 |" in (workdir / "report.md").read_text()
    assert not list(workdir.rglob(".*partial*"))


def test_demo_rerun_reuses_everything(demo, capsys):
    workdir, _, _ = demo
    demo_main(["--quick", "--work-dir", str(workdir)])
    out = capsys.readouterr().out
    assert "model: reusing" in out and "export: reusing" in out and "onnxruntime: reusing" in out


def test_demo_redoes_the_export_and_int8_when_the_size_or_image_count_changes(demo, tmp_path, capsys):
    workdir, _, _ = demo
    for name in ("model.onnx", "model.int8-onnxruntime.onnx"):
        shutil.copy(workdir / name, tmp_path / name)
    checkpoint, config = workdir / "train" / "latest.pth", DemoConfig.quick(tmp_path)
    onnx_path = demo_steps._export(config, checkpoint, demo_steps.Steps(2))
    demo_steps._int8(config, onnx_path, "onnxruntime")
    out = capsys.readouterr().out
    assert "export: reusing" in out and "onnxruntime: reusing" in out
    demo_steps._int8(replace(config, calib_images=config.calib_images + 1), onnx_path, "onnxruntime")
    assert "onnxruntime: reusing" not in capsys.readouterr().out
    demo_steps._export(replace(config, input_size=(160, 224)), checkpoint, demo_steps.Steps(2))
    out = capsys.readouterr().out
    assert "export: reusing" not in out and "160x224" in out


def test_calibrate_for_tensorrt_with_a_sensitivity_sweep(demo, tmp_path, capsys):
    workdir, _, _ = demo
    output = tmp_path / "m.int8.onnx"
    assert calibrate_main(["--onnx", str(workdir / "model.onnx"), "--calib-data", "synthetic", "--calib-images",
                           "4", "--output", str(output), "--sensitivity", "--sensitivity-images", "3", "--group-depth",
                           "2", "--exclude-worst", "1", "--sensitivity-json", str(tmp_path / "s.json")]) == 0
    ranking = json.loads((tmp_path / "s.json").read_text())
    assert len(ranking) >= 3 and ranking[0]["miou"] <= ranking[-1]["miou"]  # worst group first
    assert "keeping the 1 most costly groups in float" in capsys.readouterr().out
    model = onnx.load(str(output))
    assert unsupported(model) == []
    domains = [o.domain for o in model.opset_import]
    assert sorted(domains) == sorted(set(domains)) and "offseg" in domains  # the head's domain imported once
    props = {p.key: p.value for p in model.metadata_props}
    assert props["offseg.int8_target"] == "tensorrt" and props["offseg.int8_excluded"].startswith("OffsetLearning")


def test_onnxruntime_default_qdq_is_flagged_for_tensorrt(demo):
    workdir, _, _ = demo
    model = onnx.load(str(workdir / "model.int8-onnxruntime.onnx"))  # uint8 activations: zero points != 0
    assert any("zero point" in problem for problem in unsupported(model))


def test_validate_reports_and_enforces_the_bound(demo, tmp_path, capsys):
    workdir, _, _ = demo
    args = ["--engine", str(workdir / "model.int8-onnxruntime.onnx"), "--checkpoint",
            str(workdir / "train" / "latest.pth"), "--eval-images", "2", "--report", str(tmp_path / "r")]
    assert validate_main(args + ["--max-miou-drop", "100"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["precision"] == "int8" and len(report["per_class"]) == 9
    drop = -report["summary"]["miou_delta"]
    capsys.readouterr()
    assert validate_main(args + ["--max-miou-drop", "0"]) == (1 if drop > 0 else 0)  # any drop fails a 0 bound
    assert ("FAIL: the mIoU drop" in capsys.readouterr().out) == (drop > 0)
    assert validate_main(args + ["--max-miou-drop", "-1"]) == 2  # a bound no gate can hold is a user mistake
    assert "--max-miou-drop must be a number of at least 0" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_comes_after_the_result(demo, tmp_path, capsys, monkeypatch):
    """A full disk under --report: the comparison (minutes on a real dataset) is printed before the error."""
    from calibration import report

    def full(path, data):
        raise OffsegError(f"cannot write {path}: the disk holding {path.parent} is full")
    monkeypatch.setattr(report, "write_file", full)
    workdir, _, _ = demo
    assert validate_main(["--engine", str(workdir / "model.onnx"), "--checkpoint",
                          str(workdir / "train" / "latest.pth"), "--eval-images", "2", "--report",
                          str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert "PyTorch mIoU" in out and "model.onnx (fp32)" in out and "wrote" not in out
    assert f"error: cannot write {tmp_path / 'r' / 'report.json'}: the disk" in err


def test_a_checkpoint_of_other_classes_is_refused_before_the_demo_writes_anything(tmp_path, capsys):
    """It ran export, calibration and offseg-run before offseg-validate said "synthetic has 9 classes"."""
    from offseg import build_model
    from offseg.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(build_model("offseg-t", 5), tmp_path / "five.pth", "offseg-t")
    assert demo_main(["--quick", "--checkpoint", str(checkpoint), "--work-dir", str(tmp_path / "d")]) == 2
    assert "five.pth predicts 5 classes, and the demo validates every artifact on the synthetic scenes' 9 (sky" in \
        capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_an_interrupted_demo_gives_advice_it_accepts(tmp_path):
    """Ctrl-C during training saves the iteration and says to run the same command again, which continues there."""
    command = [str(Path(sys.executable).with_name("offseg-demo")), "--quick", "--work-dir", str(tmp_path / "d")]
    log = tmp_path / "demo.log"
    with log.open("w") as stream:
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "expected duration" not in log.read_text() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=120) == 130
    text = log.read_text()
    assert "Traceback" not in text and "--resume" not in text
    assert "run the same offseg-demo command again to continue" in text
    last = text.rstrip().splitlines()[-1]  # the stop and the advice in one closing line
    assert last.startswith("interrupted (Ctrl-C); offseg-demo stopped: run the same offseg-demo command again"), last
    saved = int(re.search(r"saved \S+latest.pth at iteration (\d+)", text).group(1))
    with log.open("w") as stream:
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "continuing from iteration" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=120)
    assert f"[1/7] model: training offseg-t on synthetic scenes (100 iterations, continuing from iteration {saved}" \
        in log.read_text()


def test_a_busy_machine_gets_the_thread_advice_unless_threads_are_set(monkeypatch, capsys):
    import os
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    demo_steps._warn_if_busy()
    assert "this machine is busy" in (out := capsys.readouterr().out) and "OMP_NUM_THREADS=" in out
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    demo_steps._warn_if_busy()
    assert "this machine is busy" in (out := capsys.readouterr().out) and "OMP_NUM_THREADS" not in out
