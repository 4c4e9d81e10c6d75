"""Hardware check of the GPU path, for the project's GPU machine (no TensorRT there): at most a few minutes, one JSON
report. Run from a checkout:  PYTHONPATH=. python benchmarks/gpu_check.py --json gpu_check.json

Checks, each recorded with its numbers (a check that raises is recorded as failed, and the rest still run):
- cuda_adapter: runtime.cuda's cuda-python adapter: the stream handle, pinned/device round trips byte-exact from the
  main thread and from a worker thread, buffers freed, the stream destroyed.
- standin_engine: runtime.backends.trt_backend end to end with benchmarks/standin_tensorrt.py, whose engine runs a
  real CUDA kernel on the stream and addresses it is given: static and dynamic shapes, batch 1 and 2, main and worker
  thread; then two negative controls (the old ``getPtr()`` stream in a child process, and a skipped synchronise),
  which must be caught.
- offseg_run_video: ``offseg-run --engine standin.plan --video`` writes a video with every frame.
- torch_reference: OffSeg-T/B/L on CUDA against tests/data/reference (TF32 off, <= 1e-4), and FP16 label agreement.
- torch_eval: ``offseg-eval``'s device protocol on CUDA scores as the numpy protocol on the CPU; its CUDA graphs
  replay eager exactly; the Triton CARAFE matches the taps form.
- fused_training: OffSeg-T's parameter gradients (train mode) with the Triton CARAFE equal the taps form's in FP64,
  and stay within FP16 rounding of them under autocast.
Exit status 0 when every check passed.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import standin_tensorrt  # noqa: E402
from runtime.engine_meta import write_sidecar  # noqa: E402
from runtime.sinks import atomic_output  # noqa: E402

NUM_CLASSES = 5
TOLERANCE = 1e-4
META = {"model": "offseg-t", "num_classes": str(NUM_CLASSES), "input_format": "float32 normalized RGB NCHW",
        "output_kind": "logits", "precision": "fp32", "mean_rgb": "123.675 116.28 103.53",
        "std_rgb": "58.395 57.12 57.375"}


def in_worker(function, *args):
    """``function(*args)`` in another thread, as the pipeline runs inference."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


def check_cuda_adapter() -> dict:
    from runtime.cuda import open_cuda
    cuda = open_cuda("cuda-python")
    detail = {"stream_handle_is_int_of_stream": cuda.stream_handle == int(cuda.stream), "round_trips": {}}

    def round_trip(nbytes: int) -> bool:
        with cuda.active():
            host = cuda.pinned_empty((nbytes,), np.uint8)
            back = cuda.pinned_empty((nbytes,), np.uint8)
            host[:] = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
            device = cuda.device_alloc(nbytes)
            cuda.to_device(device, host)
            cuda.to_host(back, device)
            cuda.synchronize()
            same = bool(np.array_equal(host, back))
            cuda.free(device)
            cuda.free_host(host)
            cuda.free_host(back)
            return same

    for where, run in (("main", round_trip), ("worker", lambda n: in_worker(round_trip, n))):
        detail["round_trips"][where] = [run(n) for n in (1, 4096, 3 << 20)]
    with cuda.active():
        cuda.close()
    detail["stream_destroyed"] = cuda.stream is None
    detail["ok"] = detail["stream_handle_is_int_of_stream"] and detail["stream_destroyed"] and all(
        all(v) for v in detail["round_trips"].values())
    return detail


def write_standin_engine(folder: Path, name: str, dims: list[int], profile: list[list[int]] | None,
                         device: dict) -> Path:
    """A stand-in plan and its sidecar, as offseg-export writes them (the GPU named is this one)."""
    path = folder / f"{name}.plan"
    path.write_bytes(standin_tensorrt.plan_bytes(NUM_CLASSES, dims, profile))
    size = "dynamic" if dims[2] < 0 else f"{dims[2]} {dims[3]}"
    write_sidecar(path, {"model": "offseg-t", "num_classes": NUM_CLASSES, "onnx": {**META, "input_size": size},
                         "precision": "fp32", "dla_core": None, "gpu": device,
                         "tensorrt": {"module": "tensorrt", "version": standin_tensorrt.__version__}})
    return path


def standin_engines(folder: Path) -> dict[str, Path]:
    from runtime.device import cuda_device
    device = cuda_device().as_dict()
    return {"static_b1": write_standin_engine(folder, "static_b1", [1, 3, 256, 256], None, device),
            "static_b2": write_standin_engine(folder, "static_b2", [2, 3, 256, 256], None, device),
            "dynamic": write_standin_engine(folder, "dynamic", [-1, 3, -1, -1],
                                            [[1, 3, 128, 128], [1, 3, 256, 256], [2, 3, 512, 512]], device)}


def max_error(backend, batch: np.ndarray, thread: str) -> float:
    out = backend.infer(batch) if thread == "main" else in_worker(backend.infer, batch)
    expected = standin_tensorrt.expected_output(batch, NUM_CLASSES)
    if out.shape != expected.shape:
        return float("inf")
    return float(np.abs(out - expected).max())


def check_standin_engine(folder: Path) -> dict:
    from runtime.backends import open_backend
    engines = standin_engines(folder)
    rng = np.random.default_rng(0)
    cases = [("static_b1", (1, 256, 256)), ("static_b2", (2, 256, 256)),
             ("dynamic", (1, 256, 256)), ("dynamic", (2, 384, 512)), ("dynamic", (1, 128, 192)),
             ("dynamic", (2, 512, 512))]
    results = []
    for name, (n, h, w) in cases:
        backend = open_backend(engines[name], cuda="cuda-python")
        for thread in ("main", "worker", "main"):
            error = max_error(backend, rng.standard_normal((n, 3, h, w)).astype(np.float32), thread)
            results.append({"engine": name, "batch": n, "size": [h, w], "thread": thread, "max_abs_error": error})
        backend.close()
    description = backend.description
    controls = {"getPtr_stream_child": negative_control_getptr(engines["static_b1"]),
                "skipped_synchronize": negative_control_no_sync(engines["static_b1"])}
    ok = all(r["max_abs_error"] <= 1e-5 for r in results) and all(c["caught"] for c in controls.values())
    return {"ok": ok, "backend": description, "runs": results, "negative_controls": controls}


def negative_control_no_sync(engine: Path) -> dict:
    """Without the stream synchronise the host reads the output before the kernel (delayed 2 ms) wrote it."""
    from runtime.backends import open_backend
    backend = open_backend(engine, cuda="cuda-python")
    synchronize = backend.cuda.synchronize
    backend.cuda.synchronize = lambda: None
    try:
        error = max_error(backend, np.ones((1, 3, 256, 256), np.float32), "main")
    finally:
        synchronize()
        backend.close()
    return {"max_abs_error": error, "caught": error > 1e-3}


GETPTR_CHILD = """
import sys
from pathlib import Path
import numpy as np
sys.path[:0] = {paths!r}
import standin_tensorrt
sys.modules["tensorrt"] = standin_tensorrt
from runtime.cuda import CudaPython
CudaPython.stream_handle = property(lambda self: self.stream.getPtr())  # the bug this check must catch
from runtime.backends import open_backend
backend = open_backend(Path({engine!r}), cuda="cuda-python")
batch = np.ones((1, 3, 256, 256), np.float32)
out = backend.infer(batch)
print(float(np.abs(out - standin_tensorrt.expected_output(batch, {classes})).max()))
"""


def negative_control_getptr(engine: Path) -> dict:
    """The stream passed as ``getPtr()`` (the bug fixed in runtime/cuda.py) must crash or give a wrong output."""
    code = GETPTR_CHILD.format(paths=sys.path[:3], engine=str(engine), classes=NUM_CLASSES)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    wrong = child.returncode == 0 and float(child.stdout.strip().splitlines()[-1]) > 1e-5
    return {"returncode": child.returncode, "stderr_tail": child.stderr.strip().splitlines()[-1:],
            "caught": child.returncode != 0 or wrong}


def check_offseg_run_video(folder: Path) -> dict:
    import cv2

    from runtime.cli import main as offseg_run
    engine = standin_engines(folder)["static_b1"]
    video, output = folder / "in.mp4", folder / "out.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 180))
    frames = 12
    for i in range(frames):
        writer.write(np.random.default_rng(i).integers(0, 256, (180, 320, 3), dtype=np.uint8))
    writer.release()
    code = offseg_run(["--engine", str(engine), "--video", str(video), "--output", str(output), "--no-progress"])
    capture = cv2.VideoCapture(str(output))
    read = 0
    while capture.read()[0]:
        read += 1
    capture.release()
    return {"ok": code == 0 and read == frames, "exit_code": code, "frames_in": frames, "frames_read_back": read}


def check_torch_reference(folder: Path) -> dict:
    import torch

    import reference
    from offseg import build_model, load_checkpoint
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    for name in ("offseg-t", "offseg-b", "offseg-l"):
        path = folder / f"{name}.pth"
        torch.save({"meta": {}, "state_dict": reference.official_state_dict(name)}, path)
        model = build_model(name)
        load_checkpoint(model, path)
        model = model.eval().cuda()
        half = copy.deepcopy(model).half()  # .half() then .float() would leave the FP32 model with FP16 weights
        data = reference.expected(name)
        row = {}
        for key in (k for k in data if k.startswith("input_")):
            size = key.removeprefix("input_")
            x = torch.from_numpy(data[key]).cuda()
            with torch.no_grad():
                fp32 = model(x).float().cpu().numpy()
                with torch.autocast("cuda", dtype=torch.float16):
                    autocast = model(x).float().cpu().numpy()
                fp16 = half(x.half()).float().cpu().numpy()
            expected = data[f"logits_{size}"]
            row[size] = {"fp32_max_abs_diff": float(np.abs(fp32 - expected).max()),
                         "fp32_share_over_tolerance": float((np.abs(fp32 - expected) > TOLERANCE).mean()),
                         "max_abs_logit": float(np.abs(expected).max()),
                         "fp32_label_agreement": float((fp32.argmax(1) == expected.argmax(1)).mean()),
                         "features_max_abs_diff": feature_diffs(model, x, data, size),
                         "fp32_deterministic_cudnn_max_abs_diff": deterministic_diff(model, x, expected),
                         "autocast_label_agreement": float((autocast.argmax(1) == expected.argmax(1)).mean()),
                         "fp16_label_agreement": float((fp16.argmax(1) == expected.argmax(1)).mean())}
        results[name] = row
    ok = all(r["fp32_max_abs_diff"] <= TOLERANCE for rows in results.values() for r in rows.values())
    return {"ok": ok, "tolerance": TOLERANCE, "tf32": False, "models": results}


def check_torch_eval(folder: Path, device: str = "cuda") -> dict:
    """``offseg-eval`` on the GPU: the device protocol's scores against the numpy protocol's on the CPU (same
    images; mIoU within 0.01), CUDA-graph replays bit-equal to eager across shapes that come, go and are evicted
    (2 kept), and the Triton CARAFE against the taps form (<= 1e-4, FP32). ``device="cpu"``: a smoke run (no
    graphs there; Triton interpreted)."""
    import torch

    from offseg import build_model
    from offseg.cuda_graphs import GraphedForward
    from offseg.data.datasets import SegmentationDataset
    from offseg.evaluate import evaluate
    from offseg.inference import torch_infer
    from offseg.models.carafe import forced_form
    from offseg.models.fold import fold_batchnorm
    from offseg.protocol import TestProtocol, protocol_logits
    from runtime.metrics import ConfusionMatrix
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = fold_batchnorm(build_model("offseg-t", num_classes=9))
    dataset = SegmentationDataset("synthetic", None, "val", length=6 if device == "cuda" else 2, size=(200, 300))
    protocol = TestProtocol("slide", crop=(128, 128), stride=(96, 96))
    on_cpu = ConfusionMatrix(dataset.num_classes)
    for index in range(len(dataset)):
        image, labels = dataset.load(index)
        on_cpu.update(protocol_logits(image, torch_infer(model), protocol).argmax(axis=2), labels)
    cpu_miou = 100 * on_cpu.scores().miou
    model = model.to(device)
    miou = {graphs: 100 * evaluate(model, dataset, protocol, progress=False, cuda_graphs=graphs).miou
            for graphs in (False, True)}
    graphed, replays = GraphedForward(model, kept=2), []
    with torch.no_grad():
        for h, w in ((64, 96), (64, 96), (64, 96), (96, 64), (96, 64), (64, 96), (128, 128), (128, 128),
                     (32, 32), (32, 32), (64, 96), (64, 96)):
            x = torch.randn(1, 3, h, w, device=device)
            replays.append(bool(torch.equal(graphed(x), model(x))))
        x = torch.randn(1, 3, 128, 192, device=device)
        with forced_form("taps"):
            taps = model(x)
        with forced_form("fused"):
            fused = model(x)
    fused_diff = float((fused - taps).abs().max())
    return {"ok": abs(miou[False] - cpu_miou) < 0.01 and miou[True] == miou[False] and all(replays)
            and len(graphed.graphs) == 2 and fused_diff <= TOLERANCE,
            "device": device, "miou_numpy_protocol_cpu": cpu_miou, "miou_device_protocol": miou[False],
            "miou_cuda_graphs": miou[True], "graph_replays_equal_eager": replays,
            "graphs_kept": len(graphed.graphs), "fused_form_max_abs_diff_vs_taps": fused_diff}


def check_fused_training(folder: Path, device: str = "cuda", size: int = 128) -> dict:
    import torch
    import torch.nn.functional as F

    from offseg import build_model
    from offseg.models.carafe import forced_form
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = build_model("offseg-t", num_classes=9).train().to(device)
    x = torch.randn(2, 3, size, size, device=device)
    labels = torch.randint(0, 9, (2, size // 4, size // 4), device=device)

    def gradients(form: str, dtype: torch.dtype, amp: bool) -> list:
        model.to(dtype).zero_grad()
        with forced_form(form), torch.autocast(device, dtype=torch.float16, enabled=amp):
            F.cross_entropy(model(x.to(dtype)).float(), labels).backward()
        return [p.grad.double() for p in model.parameters() if p.grad is not None]

    def largest_error(got: list, expected: list, floor: float) -> float:
        # the biases of convolutions followed by BatchNorm have a zero gradient, computed as rounding noise
        floor = floor * max(float(e.abs().max()) for e in expected)
        return max(float((g - e).abs().max() / e.abs().max().clamp(min=floor)) for g, e in zip(got, expected))

    fp64 = largest_error(gradients("fused", torch.float64, False), gradients("taps", torch.float64, False), 1e-6)
    result = {"device": device, "input": f"2x3x{size}x{size}", "fp64_max_relative_gradient_error": fp64}
    ok = fp64 <= 1e-9
    if device == "cuda":  # autocast's FP16 path; the CPU's autocast is BF16
        amp = largest_error(gradients("fused", torch.float32, True), gradients("taps", torch.float32, True), 1e-3)
        result["autocast_max_relative_gradient_error"] = amp
        ok = ok and amp <= 5e-2
    return {"ok": ok, **result}


def feature_diffs(model, x, data: dict, size: str) -> dict:
    """Max |diff| of each stored backbone feature: where on the way to the logits a difference starts."""
    import torch
    with torch.no_grad():
        features = model.backbone(x)
    return {f"feat{i}": float(np.abs(f.float().cpu().numpy() - data[f"feat{i}_{size}"]).max())
            for i, f in enumerate(features) if f"feat{i}_{size}" in data}


def deterministic_diff(model, x, expected: np.ndarray) -> float:
    """The FP32 logits' max |diff| with cuDNN restricted to deterministic algorithms (no FFT/Winograd choice)."""
    import torch
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with torch.no_grad():
            return float(np.abs(model(x).float().cpu().numpy() - expected).max())
    finally:
        torch.backends.cudnn.deterministic = False


def environment() -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "machine": platform.machine()}
    try:
        import cuda.bindings
        info["cuda_bindings"] = cuda.bindings.__version__
    except ImportError:
        info["cuda_bindings"] = None
    from runtime.device import cuda_device
    device = cuda_device()
    info["gpu"] = device.as_dict() if device else None
    for module in ("torch", "cupy", "onnxruntime", "cv2"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True) if _has("nvidia-smi") else None
    info["nvidia_smi"] = smi.stdout.strip() if smi and smi.returncode == 0 else None
    return info


def _has(command: str) -> bool:
    return any((Path(p) / command).is_file() for p in os.environ.get("PATH", "").split(os.pathsep))


CHECKS = {"cuda_adapter": lambda folder: check_cuda_adapter(), "standin_engine": check_standin_engine,
          "offseg_run_video": check_offseg_run_video, "torch_reference": check_torch_reference,
          "torch_eval": check_torch_eval, "fused_training": check_fused_training}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where the report goes")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    names = [n for n in args.checks.split(",") if n]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    sys.modules["tensorrt"] = standin_tensorrt  # there is no TensorRT on the GPU machine; the stand-in takes its place
    report = {"environment": environment(), "checks": {}}
    if report["environment"]["gpu"] is None:
        print("no CUDA GPU is visible (cuda-python found no device): nothing to check", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name in names:
            start = time.perf_counter()
            folder = Path(tmp) / name
            folder.mkdir()
            try:
                result = CHECKS[name](folder) if report["environment"]["gpu"] else {"ok": False, "error": "no GPU"}
            except Exception as error:  # a failed check is a result; the others still run
                result = {"ok": False, "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc().splitlines()[-6:]}
            result["seconds"] = round(time.perf_counter() - start, 2)
            report["checks"][name] = result
            print(f"{name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)", flush=True)
    report["ok"] = all(c["ok"] for c in report["checks"].values())
    with atomic_output(args.json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}: {'all checks passed' if report['ok'] else 'FAILURES'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
