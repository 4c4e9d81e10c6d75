"""offseg-bench runs every requested backend in one process and reports ratios (numbers are not asserted)."""
import json

import pytest

from offseg.bench import main as bench_main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bench")]


def test_bench_reports_each_backend_with_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_main(["--size", "64", "96", "--num-classes", "9", "--iters", "2", "--warmup", "1", "--backends",
                       "torch,onnx-fp32,trt-fp16", "--workdir", str(tmp_path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"torch", "onnx-fp32"}
    assert report["results"]["torch"]["speedup_vs_torch"] == pytest.approx(1.0)
    assert "trt-fp16" in report["skipped"]  # no TensorRT / GPU here: skipped with the reason
    assert "vs torch" in capsys.readouterr().out


def test_bench_rejects_unknown_backends(tmp_path, capsys):
    assert bench_main(["--backends", "torch,tpu", "--workdir", str(tmp_path)]) == 2
    assert "unknown backend(s) tpu" in capsys.readouterr().err
