"""``offseg-bench``: latency (mean, p50, p95), throughput and peak memory of each backend in one run, with ratios
against PyTorch eager, and the ``offseg-run`` pipeline FPS against bare inference FPS.

Backends: ``torch`` (eager, CPU), ``torch-cuda`` / ``torch-cuda-fp16`` (eager on the GPU, FP32 without TF32 /
``.half()``), ``torch-cuda-graph`` (the FP16 GPU model replayed from a CUDA graph, captured during the warm-up),
``torch-compile`` (``torch.compile`` of the FP16 GPU model; compiled during the warm-up); the GPU rows run the model
with its BatchNorms folded, as ``offseg-eval`` does,
``onnx-fp32`` (fused head, FreqFusion in the gather form), ``onnx-fp32-taps`` (FreqFusion in the readable taps
form, what TensorRT engines get), ``onnx-fp32-unfused`` (the paper's head, for the
fusion's effect), ``onnx-int8`` (Q/DQ for ONNX Runtime CPU), ``onnx-int8-trt`` (the Q/DQ flavour TensorRT builds
from, run by ONNX Runtime), ``openvino`` / ``openvino-taps`` (OpenVINO on CPU running the same ONNX files, inlined;
the ``openvino`` extra), ``trt-fp16`` / ``trt-int8`` (TensorRT engines of the taps form, what ``auto`` builds) and
``trt-fp16-gather`` / ``trt-int8-gather`` (of the gather form, to compare the two on GPUs). Backends that cannot run
here are skipped with the reason. Exported files are cached in the work folder. After each backend's warm-up, the
backends take turns call by call, so the ratios come from the same stretch of time. The memory a backend's warm-up
adds is measured in a process of its own (in one process a backend reuses what earlier ones freed), except for the
GPU rows, measured during their warm-up in the bench's process.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.errors import OffsegError

from .commands import build_engine, run_step, tensorrt_unavailable

BENCH_DESCRIPTION = __doc__.split("\n\n")[0].replace("``", "")
BACKENDS = ("torch", "torch-cuda", "torch-cuda-fp16", "torch-cuda-graph", "torch-compile", "onnx-fp32",
            "onnx-fp32-taps", "onnx-fp32-unfused", "onnx-int8", "onnx-int8-trt", "openvino", "openvino-taps",
            "trt-fp16", "trt-int8", "trt-fp16-gather", "trt-int8-gather")
INT8_TARGETS = {"onnx-int8": "onnxruntime", "onnx-int8-trt": "tensorrt"}


def _rss(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _warm(infer, batch: np.ndarray, warmup: int) -> float:
    """Run ``warmup`` (>= 1) calls; returns the peak resident memory they added above the starting point (MiB)."""
    before = _rss("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak-RSS counter (Linux)
    except OSError:
        pass
    for _ in range(max(warmup, 1)):
        infer(batch)
    return max(_rss("VmHWM") - before, 0) / 2 ** 20


def _time_round_robin(infers: dict, batch: np.ndarray, iters: int) -> dict[str, list[float]]:
    """Milliseconds per call, backends taking turns call by call, so drift in the machine's speed (other jobs,
    clocks) hits every backend alike and the ratios stay fair."""
    times: dict[str, list[float]] = {name: [] for name in infers}
    for _ in range(iters):
        for name, infer in infers.items():
            start = time.perf_counter()
            infer(batch)
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def _stats(times: list[float], batch_size: int) -> dict:
    mean = float(np.mean(times))
    return {"mean_ms": mean, "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "images_per_s": batch_size * 1000 / mean}


def _onnx(workdir: Path, model, name: str, size, batch: int, fused: bool, form: str,
          checkpoint: Path | None) -> Path:
    """The export of ``model`` (from ``checkpoint``, or fresh weights) in the work folder, reused only when its
    metadata is what this export would write: same head, FreqFusion form, opset, classes and weights."""
    from calibration.files import load_onnx, read_metadata
    from export.onnx import OnnxOptions, export_onnx, label_metadata, metadata
    path = workdir / f"{name}-{size[0]}x{size[1]}-b{batch}{'' if fused else '-unfused'}-{form}.onnx"
    options = OnnxOptions(input_size=tuple(size), fused_head=fused, batch=batch, freqfusion_form=form)
    labels = label_metadata(model.num_classes, checkpoint)  # the checkpoint read once for the check and the export
    expected = metadata(name, model.num_classes, options, checkpoint, labels)
    if not path.is_file() or any(read_metadata(load_onnx(path)).get(key) != expected[key] for key in CACHE_KEYS):
        print(f"exporting {path.name} ...", flush=True)
        export_onnx(model, name, path, options, checkpoint, labels)
    return path


CACHE_KEYS = ("offseg.fused_head", "offseg.freqfusion_form", "offseg.opset", "offseg.num_classes",
              "offseg.checkpoint_sha256")


def _int8(fp32: Path, target: str) -> Path:
    from calibration.quantize import QuantOptions, quantize_unless_current
    path = fp32.with_name(f"{fp32.stem}.int8-{target}.onnx")
    if quantize_unless_current(fp32, path, "synthetic", QuantOptions(target=target, samples=8)) is not None:
        print(f"wrote {path.name}", flush=True)
    return path


def _openvino(fp32: Path, threads: int):
    """OpenVINO's CPU plugin on an inlined copy of ``fp32`` (it cannot read ONNX local functions): infer(x)."""
    import onnx.inliner

    from calibration.files import load_onnx, read_metadata, save_checked
    try:
        import openvino
    except ImportError:
        raise OffsegError("OpenVINO is not installed: pip install 'offseg-deploy[openvino]'") from None
    inlined = fp32.with_name(f"{fp32.stem}.inlined.onnx")
    if not inlined.is_file() or inlined.stat().st_mtime < fp32.stat().st_mtime:
        model = load_onnx(fp32)
        save_checked(onnx.inliner.inline_local_functions(model), read_metadata(model), inlined)
    compiled = openvino.Core().compile_model(str(inlined), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return lambda x: request.infer({0: x})[output]


def _torch_gpu(model, backend: str):
    """infer(x) of the PyTorch model on the GPU (input copied in, output copied out, as a user's call does)."""
    import torch

    from offseg.cuda_graphs import GraphedForward
    from offseg.models.fold import fold_batchnorm
    if not torch.cuda.is_available():
        raise OffsegError(f"{backend} needs a CUDA GPU (torch {torch.__version__} sees none)")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dtype = torch.float32 if backend == "torch-cuda" else torch.float16
    net = fold_batchnorm(model).to("cuda", dtype)  # a copy
    if backend == "torch-compile":
        net = torch.compile(net)
    elif backend == "torch-cuda-graph":
        net = GraphedForward(net)

    def infer(x):
        with torch.no_grad():
            return net(torch.from_numpy(x).to("cuda", dtype)).float().cpu()
    return infer


def _engine(fp32: Path, precision: str) -> Path:
    reason = tensorrt_unavailable()
    if reason:
        raise OffsegError(reason)
    return build_engine(fp32, fp32.with_name(f"{fp32.stem}.{precision}.plan"), precision)


def _open(backend: str, workdir: Path, model, name: str, size, batch: int, checkpoint: Path | None,
          allow_engine_host_code: bool):
    """infer(x) of a non-torch backend, exporting, calibrating or building what it needs first."""
    import torch

    from runtime.backends import open_backend
    if backend.startswith("trt-"):  # engines get the taps form (what TensorRT fuses) unless named -gather
        precision, _, form = backend.removeprefix("trt-").partition("-")
        form = form or "taps"
    else:
        form = "taps" if backend.endswith("-taps") else "gather"
    fp32 = _onnx(workdir, model, name, size, batch, fused=backend != "onnx-fp32-unfused", form=form,
                 checkpoint=checkpoint)
    if backend.startswith("openvino"):
        return _openvino(fp32, torch.get_num_threads())
    if backend in INT8_TARGETS:
        return open_backend(_int8(fp32, INT8_TARGETS[backend])).infer
    if backend.startswith("trt-"):
        return open_backend(_engine(fp32, precision), allow_engine_host_code=allow_engine_host_code).infer
    return open_backend(fp32).infer


def _model(args: argparse.Namespace):
    """The model benchmarked and its name: the checkpoint's, or fresh weights (seed 0)."""
    import torch

    if args.checkpoint:
        from offseg.checkpoint import build_from_checkpoint
        return build_from_checkpoint(args.checkpoint, args.model)
    from offseg.zoo import build_model
    torch.manual_seed(0)
    name = args.model or "offseg-t"
    return build_model(name, args.num_classes).eval(), name


def _checkpoint(args: argparse.Namespace) -> Path | None:
    """--checkpoint as a path (the memory-measuring child gets it as text)."""
    return Path(args.checkpoint) if args.checkpoint else None


def _infer(backend: str, args: argparse.Namespace, model, name: str):
    """infer(x) of ``backend``, exporting, calibrating or building what it needs first (cached in the work folder)."""
    import torch

    if backend == "torch":
        def infer(x):
            with torch.no_grad():
                return model(torch.from_numpy(x))
        return infer
    if backend.startswith("torch-"):
        return _torch_gpu(model, backend)
    return _open(backend, args.work_dir, model, name, tuple(args.input_size), args.batch_size, _checkpoint(args),
                 args.allow_engine_host_code)


def _images(args: argparse.Namespace) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((args.batch_size, 3, *args.input_size), dtype=np.float32)


MEMORY_ARGS = ("checkpoint", "model", "num_classes", "input_size", "batch_size", "work_dir", "warmup",
               "allow_engine_host_code")


def _peak_in_own_process(backend: str, args: argparse.Namespace) -> float:
    """The memory ``backend``'s warm-up adds (MiB), measured in a process of its own: in the bench's process a
    backend can reuse what an earlier one freed, and would read less the later it comes."""
    spec = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
            if key in MEMORY_ARGS}
    child = subprocess.run([sys.executable, "-c", "import sys; from chain.bench import measure_memory; "
                            "measure_memory(sys.argv[1], sys.argv[2])", backend, json.dumps(spec)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise OffsegError(f"measuring {backend}'s memory failed: {(child.stderr.strip() or '?').splitlines()[-1]}")
    return float(child.stdout.strip().splitlines()[-1])


def measure_memory(backend: str, spec: str) -> None:
    """A child of ``_peak_in_own_process``: prints the MiB ``backend``'s warm-up adds in this process."""
    args = argparse.Namespace(**json.loads(spec))
    args.work_dir = Path(args.work_dir)
    model, name = _model(args)
    print(_warm(_infer(backend, args, model, name), _images(args), args.warmup))


def run_bench(args: argparse.Namespace) -> dict:
    import torch

    args.work_dir.mkdir(parents=True, exist_ok=True)
    model, name = _model(args)
    images = _images(args)
    infers, memory, skipped = {}, {}, {}
    for backend in args.backends:
        try:
            infer = _infer(backend, args, model, name)
            print(f"warming up {backend} ...", flush=True)
            in_process = _warm(infer, images, args.warmup)
            # the GPU rows' warm-up compiles or captures: not repeated (their memory is mostly the GPU's)
            memory[backend] = in_process if backend.startswith("torch-") else _peak_in_own_process(backend, args)
            infers[backend] = infer
        except OffsegError as error:
            skipped[backend] = str(error)
    print(f"timing {', '.join(infers)} in turns ({args.iters} rounds) ...", flush=True)
    times = _time_round_robin(infers, images, args.iters)
    results = {b: {**_stats(times[b], args.batch_size), "peak_extra_mib": memory[b]} for b in infers}
    if "torch" in results:
        for figures in results.values():
            figures["speedup_vs_torch"] = results["torch"]["mean_ms"] / figures["mean_ms"]
    report = {"model": name, "size": list(args.input_size), "batch": args.batch_size,
              "threads": torch.get_num_threads(), "results": results, "skipped": skipped}
    if args.pipeline and "onnx-fp32" in results:
        fp32 = _onnx(args.work_dir, model, name, tuple(args.input_size), 1, True, "gather", _checkpoint(args))
        report["pipeline"] = _pipeline(args.work_dir, fp32, args)
    return report


def _pipeline(workdir: Path, onnx_path: Path, args) -> dict:
    """offseg-run on a synthetic video (annotated output written) vs bare inference FPS of the same model."""
    from offseg.data.synthetic import write_video
    from runtime.backends import open_backend
    video = workdir / "bench-video.mp4"
    if not video.is_file():
        write_video(video, seed=1, frames=args.pipeline_frames, height=args.input_size[0], width=args.input_size[1])
    summary = workdir / "bench-run.json"
    run_step("offseg-run on the pipeline video", "offseg-run",
             ["--engine", str(onnx_path), "--video", str(video), "--output", str(workdir / "bench-out.mp4"),
              "--summary", str(summary), "--no-progress"])
    pipeline_fps = json.loads(summary.read_text())["fps"]
    backend = open_backend(onnx_path)
    x = np.random.default_rng(0).standard_normal((1, 3, *args.input_size), dtype=np.float32)
    _warm(backend.infer, x, args.warmup)
    bare = _stats(_time_round_robin({"bare": backend.infer}, x, args.iters)["bare"], 1)["images_per_s"]
    return {"pipeline_fps": pipeline_fps, "bare_inference_fps": bare, "ratio": pipeline_fps / bare}


def format_report(report: dict) -> str:
    lines = [f"{report['model']} {report['size'][0]}x{report['size'][1]}, batch {report['batch']}, "
             f"{report['threads']} threads",
             f"{'backend':<18} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>7} {'peak MiB':>9} {'vs torch':>9}"]
    for name, r in report["results"].items():
        ratio = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "-"
        lines.append(f"{name:<18} {r['mean_ms']:8.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
                     f"{r['images_per_s']:7.2f} {r['peak_extra_mib']:9.0f} {ratio:>9}")
    lines += [f"{name:<18} skipped: {reason}" for name, reason in report["skipped"].items()]
    if "pipeline" in report:
        p = report["pipeline"]
        lines.append(f"offseg-run pipeline {p['pipeline_fps']:.2f} FPS vs bare inference "
                     f"{p['bare_inference_fps']:.2f} FPS: {100 * p['ratio']:.0f}%")
    return "\n".join(lines)
