"""offseg-bench runs every requested backend in one process and reports ratios (numbers are not asserted)."""
import json
from argparse import Namespace

import pytest

from chain.cli import bench_main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bench")]


def test_bench_reports_each_backend_with_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_main(["--input-size", "64", "96", "--num-classes", "9", "--iters", "2", "--warmup", "1", "--backends",
                       "torch,onnx-fp32,openvino,trt-fp16,trt-int8-gather", "--work-dir", str(tmp_path),
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    try:
        import openvino  # noqa: F401 (the optional extra)
        assert set(report["results"]) == {"torch", "onnx-fp32", "openvino"}
    except ImportError:
        assert set(report["results"]) == {"torch", "onnx-fp32"}
        assert "pip install 'offseg-deploy[openvino]'" in report["skipped"]["openvino"]
    assert report["results"]["torch"]["speedup_vs_torch"] == pytest.approx(1.0)
    # no TensorRT / GPU here: skipped with the reason, for engines of either FreqFusion form
    assert "trt-fp16" in report["skipped"] and "trt-int8-gather" in report["skipped"]
    assert "vs torch" in capsys.readouterr().out
    # the CPU rows' memory comes from a process of each's own (in this one, a backend reuses what earlier ones freed)
    assert all(figures["peak_extra_mib"] > 0 for figures in report["results"].values())


def test_a_backends_memory_does_not_depend_on_what_ran_before(tmp_path, monkeypatch):
    """A CPU row's memory is measured in a process of its own (faked here), not by its warm-up in the bench's."""
    import chain.bench as bench

    children = []
    monkeypatch.setattr(bench, "_warm", lambda infer, batch, warmup: 0.0)
    monkeypatch.setattr(bench, "_peak_in_own_process", lambda backend, args: children.append(backend) or 7.0)
    monkeypatch.setattr(bench, "_infer", lambda backend, *_: (lambda x: x))
    monkeypatch.setattr(bench, "_model", lambda args: (None, "offseg-t"))
    report = bench.run_bench(Namespace(backends=["torch", "onnx-fp32", "torch-cuda"], work_dir=tmp_path,
                                       input_size=[32, 32], batch_size=1, warmup=1, iters=1, pipeline=False))
    assert children == ["torch", "onnx-fp32"] and report["results"]["onnx-fp32"]["peak_extra_mib"] == 7.0
    assert report["results"]["torch-cuda"]["peak_extra_mib"] == 0.0  # a GPU row: its warm-up's in-process figure


@pytest.mark.parametrize("argv, message", [
    (["--backends", "torch,tpu"], "unknown backend(s) tpu; choose from torch,"),
    (["--backends", ","], "--backends is empty; choose from"),
    (["--num-classes", "0"], "--num-classes must be at least 1, got 0"),
    (["--iters", "0"], "--iters must be at least 1, got 0"),
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (["--pipeline", "--pipeline-frames", "0"], "--pipeline-frames must be at least 1, got 0"),
    (["--pipeline-frames", "5"], "--pipeline-frames sets the length of the --pipeline video; add --pipeline"),
    (["--checkpoint", "CKPT", "--num-classes", "19"], "--num-classes sets the classes of fresh weights; "),
])
def test_bench_mistakes_are_one_sentence_before_any_work(tmp_path, capsys, argv, message):
    (tmp_path / "t.pth").write_bytes(b"")  # refused before it is read
    argv = [str(tmp_path / "t.pth") if a == "CKPT" else a for a in argv]
    assert bench_main([*argv, "--work-dir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "wd").exists()


def test_bench_backends_take_spaces_after_commas(tmp_path, monkeypatch):
    import chain.cli
    seen = []
    monkeypatch.setattr(chain.cli, "run_bench", lambda args: seen.append(args.backends) or {})
    monkeypatch.setattr(chain.cli, "format_report", lambda report: "")
    assert bench_main(["--backends", "torch, onnx-fp32,", "--work-dir", str(tmp_path)]) == 0
    assert seen == [["torch", "onnx-fp32"]]


def _benchmark_script(name):
    import importlib.util
    import sys
    from pathlib import Path
    folder = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))  # the scripts import their sibling procmem.py
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def test_run_traced_sees_the_child_memory_and_exit_code():
    import sys
    procmem = _benchmark_script("procmem")
    trace = procmem.run_traced([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); time.sleep(1.5)"],
                               interval=0.1)
    assert trace.exit_code == 0 and trace.peak_mib >= 300
    assert max(rss for _, rss in trace.samples) >= 300
    assert procmem.run_traced([sys.executable, "-c", "raise SystemExit(3)"]).exit_code == 3


def test_soak_growth_fit_tells_a_leak_from_a_flat_run():
    soak = _benchmark_script("soak")
    t = [i * 0.5 for i in range(200)]
    flat = [(s, 500.0 + (5.0 if i % 2 else -5.0)) for i, s in enumerate(t)]
    leak = [(s, 400.0 + 2.0 * s) for s in t]  # 2 MiB/s
    assert abs(soak.growth(flat)[2]) < 1.0
    start, end, grown = soak.growth(leak)
    assert grown == pytest.approx(2.0 * (t[-1] - t[20]), rel=1e-6) and end > start


def test_bench_table_rows_merge_and_plot(tmp_path):
    run_all = _benchmark_script("run_all")
    rows = [f"| {m} | {s} | {b} | {ms} | {ms} | 1.00 | 100 | 1.00x |" for m in ("offseg-t", "offseg-b")
            for s, ms in (("512x512", 600.0), ("1024x2048", 4800.0)) for b in ("torch", "onnx-fp32")]
    grouped = run_all._table_rows("\n".join(["| model | size |", *rows]))
    assert list(grouped) == [("offseg-t", "512x512"), ("offseg-t", "1024x2048"), ("offseg-b", "512x512"),
                             ("offseg-b", "1024x2048")]
    assert all(len(group) == 2 for group in grouped.values())
    pytest.importorskip("matplotlib")
    import cv2
    run_all.plot_latency(rows, tmp_path / "latency.png")
    image = cv2.imread(str(tmp_path / "latency.png"))
    assert image is not None and image.shape[1] > image.shape[0]  # two panels side by side


def test_a_cached_export_is_reused_only_for_the_same_weights_and_classes(tmp_path, monkeypatch):
    """The work folder's ONNX file was reused for any class count or checkpoint of the same model and size."""
    from types import SimpleNamespace

    import onnx

    import chain.bench as bench
    import export.onnx as export_onnx
    from offseg import build_model, save_checkpoint
    from tiny_onnx import write_tiny_onnx

    exports = []

    def export(model, name, path, options, checkpoint=None, labels=None):  # a tiny graph, the real metadata
        exports.append((model.num_classes, checkpoint))
        write_tiny_onnx(path, dynamic=False, size=options.input_size)
        graph = onnx.load(str(path))
        onnx.helper.set_model_props(graph, export_onnx.metadata(name, model.num_classes, options, checkpoint,
                                                                labels))
        onnx.save(graph, str(path))

    monkeypatch.setattr(export_onnx, "export_onnx", export)
    first, second = (save_checkpoint(build_model("offseg-t", 9), tmp_path / f"{n}.pth", "offseg-t") for n in "ab")
    runs = [(9, None), (9, None), (19, None), (9, first), (9, first), (9, second)]
    for classes, checkpoint in runs:
        bench._onnx(tmp_path, SimpleNamespace(num_classes=classes), "offseg-t", (64, 64), 1, True, "gather",
                    checkpoint)
    assert exports == [(9, None), (19, None), (9, first), (9, second)]
