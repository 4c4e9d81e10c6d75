"""PyTorch on the GPU, measured in one run (a few minutes on the project's H200): prints a table and writes JSON.

    PYTHONPATH=. python benchmarks/gpu.py --json gpu.json [--compile offseg-t@512x512[:fused]] [--quick]

Rows, fresh weights, 150 classes, batch 1, BatchNorm folded (as ``offseg-eval`` runs the model) unless said:
- latency of OffSeg-T/B/L at 512x512 and 1024x2048 in FP32 (TF32 off), FP16 (``.half()``), and for OffSeg-T FP16
  channels-last: eager, and replayed as a CUDA graph (whose output must equal eager's), with the CUDA kernels one
  forward launches and the most launched of them (torch.profiler),
  for each CARAFE form (taps, the default; unfold and fused (one Triton kernel), the opt-in GPU forms, with their
  max difference to taps);
- ``torch.compile`` (default mode) of the configurations given to ``--compile`` (a CARAFE form each), with its
  compile time and kernels per forward, and of the training step (``offseg-train --amp --compile``, with the taps
  and the fused form);
- training OffSeg-T, batch 16, crop 512, through ``offseg.train.train_step`` (FP32, ``--amp``, ``--amp`` with the
  model and batches channels-last, ``--amp`` with the unfold CARAFE form, which has far fewer kernels, FP32 and
  ``--amp`` with the fused form: Triton kernels forward and backward), in it/s;
- ``offseg-eval``'s evaluation loop, images/s on the GPU (eager, ``--cuda-graphs``, the fused CARAFE) and on the
  CPU (same images), on synthetic scenes written as files in ADE20K's layout (512x683, 2 slide windows) and
  Cityscapes' (1024x2048, 3 windows), read and scored by their datasets' test protocols;
- profiles (torch.profiler, the 15 kernels that take the most GPU time) of OffSeg-T's FP16 forward at 1024x2048
  and of its ``--amp`` training step, batch 16, crop 512, with the taps and the fused CARAFE forms.
Every figure is measured in this run; nothing is compared with a stored number. A row that fails (a kernel that
does not compile, a capture that is refused) keeps its error and the run goes on; the exit status is 1 then.
"""
from __future__ import annotations

import argparse
import collections
import copy
import itertools
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offseg import build_model  # noqa: E402
from offseg.models.carafe import forced_form  # noqa: E402
from offseg.models.fold import fold_batchnorm  # noqa: E402
from offseg.names import CARAFE_FORMS  # noqa: E402  (the default and the opt-in GPU forms, measured in one run)
from runtime.sinks import atomic_output  # noqa: E402

MODELS = ("offseg-t", "offseg-b", "offseg-l")
SIZES = ((512, 512), (1024, 2048))


def timed(function, iters: int, warmup: int = 3) -> float:
    """Mean milliseconds of ``function()`` on the GPU over ``iters`` runs, after ``warmup``."""
    for _ in range(warmup):
        function()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        function()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def kernel_launches(function, top: int = 6) -> dict:
    """CUDA kernels one ``function()`` launches (memcpy/memset excluded): ``kernels``, the count, and
    ``most_launched``, the ``top`` kernel names by launches (what a count above the target is made of)."""
    from torch.profiler import ProfilerActivity, profile
    function()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        function()
        torch.cuda.synchronize()
    names = collections.Counter(e.name[:120] for e in prof.events() if e.device_type.name == "CUDA"
                                and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())
    return {"kernels": sum(names.values()), "most_launched": dict(names.most_common(top))}


def error_text(error: Exception) -> str:
    """One line for a failure that is a result (a row keeps it and the run goes on: GPU time is scarce)."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def graphed(model, x):
    """``model(x)`` captured as a CUDA graph; returns (replay function, static output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(x)
    return graph.replay, out


# (dtype, memory format) per latency precision; channels-last (cuDNN's native layout for FP16 tensor cores) for
# the first model only, to see whether the transposes cuDNN may add around NCHW FP16 convolutions cost
PRECISIONS = {"fp32": (torch.float32, torch.contiguous_format), "fp16": (torch.float16, torch.contiguous_format),
              "fp16-channels-last": (torch.float16, torch.channels_last)}


def latency_rows(iters: int, models, sizes) -> list[dict]:
    rows = []
    for name in models:
        model = fold_batchnorm(build_model(name)).cuda()  # as offseg-eval and the PyTorch backend run it
        for precision, (dtype, layout) in PRECISIONS.items():
            if layout == torch.channels_last and name != models[0]:
                continue
            net = model if precision == "fp32" else copy.deepcopy(model).to(dtype=dtype, memory_format=layout)
            for (h, w), form in itertools.product(sizes, CARAFE_FORMS):
                x = torch.randn(1, 3, h, w, device="cuda", dtype=dtype).contiguous(memory_format=layout)
                row = {"model": name, "precision": precision, "size": f"{h}x{w}", "carafe": form,
                       "batchnorm": "folded"}
                with torch.no_grad(), forced_form(form):
                    try:
                        row["eager_ms"] = timed(lambda: net(x), iters)
                        row.update(kernel_launches(lambda: net(x)))
                        if form != "taps":
                            with forced_form("taps"):
                                reference = net(x).float()
                            row["max_abs_diff_vs_taps"] = float((net(x).float() - reference).abs().max())
                    except Exception as error:
                        row["error"] = error_text(error)
                    else:
                        try:
                            replay, out = graphed(net, x)
                            row["graph_ms"] = timed(replay, iters)
                            replay()
                            torch.cuda.synchronize()
                            row["graph_max_abs_diff_vs_eager"] = float((out.float() - net(x).float()).abs().max())
                        except Exception as error:
                            row["graph_error"] = error_text(error)
                rows.append(row)
                print(json.dumps(row), flush=True)
            del net
        del model
        torch.cuda.empty_cache()
    return rows


def compile_rows(specs: list[str], iters: int) -> list[dict]:
    rows = []
    for spec in specs:
        name, _, size = spec.partition("@")
        size, _, form = size.partition(":")
        form = form or "taps"
        h, w = map(int, size.split("x"))
        model = fold_batchnorm(build_model(name)).cuda().half()
        x = torch.randn(1, 3, h, w, device="cuda", dtype=torch.float16)
        row = {"model": name, "precision": "fp16", "size": size, "carafe": form, "batchnorm": "folded"}
        start = time.perf_counter()
        compiled = torch.compile(model)
        try:
            with torch.no_grad(), forced_form(form):
                compiled(x)
                torch.cuda.synchronize()
                row["compile_s"] = round(time.perf_counter() - start, 1)
                row["compiled_ms"] = timed(lambda: compiled(x), iters)
                row.update(kernel_launches(lambda: compiled(x)))  # inductor fuses the pointwise ops
                row["max_abs_diff_vs_eager"] = float((compiled(x).float() - model(x).float()).abs().max())
        except Exception as error:
            row["compile_error"] = error_text(error)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


TRAINING_VARIANTS = ({"amp": False}, {"amp": True}, {"amp": True, "channels_last": True},
                     {"amp": True, "carafe": "unfold"}, {"amp": False, "carafe": "fused"},
                     {"amp": True, "carafe": "fused"})


def training_rows(iters: int, batch: int, variants=TRAINING_VARIANTS, device: str = "cuda",
                  crop: int = 512) -> list[dict]:
    """it/s of ``train_step`` (OffSeg-T, 150 classes) for each variant: ``amp``, ``compile`` (a torch.compile
    backend), ``channels_last`` (model and batches), ``carafe`` (the form; default taps). A compiled variant's
    first (compiling) steps are timed apart as ``compile_s``. ``device``/``crop``: for a smoke run on the CPU."""
    from offseg.train import train_step
    rows = []
    labels = torch.randint(0, 150, (batch, crop, crop))
    for variant in variants:
        amp, backend = variant.get("amp", False), variant.get("compile")
        layout = torch.channels_last if variant.get("channels_last") else torch.contiguous_format
        images = torch.randn(batch, 3, crop, crop).contiguous(memory_format=layout)
        model = build_model("offseg-t").to(device).train().to(memory_format=layout)
        forward = model if backend is None else torch.compile(model, backend=backend)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=amp and device == "cuda")

        def steps(count: int) -> float:
            start = time.perf_counter()
            with forced_form(variant.get("carafe", "taps")):
                for _ in range(count):
                    train_step(forward, [(images, labels)], optimizer, scaler, torch.device(device), amp)
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        rows.append({"model": "offseg-t", "batch": batch, "crop": f"{crop}x{crop}", "amp": amp, "compile": backend,
                     "channels_last": bool(variant.get("channels_last")), "carafe": variant.get("carafe", "taps")})
        try:
            warmup_s = steps(3)
            rows[-1]["it_per_s"] = iters / steps(iters)
            if backend is not None:
                rows[-1]["compile_s"] = round(warmup_s, 1)
        except Exception as error:
            rows[-1]["error"] = error_text(error)
        print(json.dumps(rows[-1]), flush=True)
        del model, forward, optimizer
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def busiest(function, device: str = "cuda", top: int = 15) -> dict:
    """Where one ``function()`` spends its time: the ``top`` kernel names by total GPU time (on the CPU: ATen ops
    by self time, for the smoke test), with launch counts and shares of the whole."""
    from torch.profiler import ProfilerActivity, profile
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU]) as prof:
        function()
        if device == "cuda":
            torch.cuda.synchronize()
    if device == "cuda":
        spans = [(e.name, e.time_range.elapsed_us(), 1) for e in prof.events() if e.device_type.name == "CUDA"]
    else:
        spans = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    totals: dict[str, list] = {}
    for name, microseconds, count in spans:
        entry = totals.setdefault(name, [0.0, 0])
        entry[0] += microseconds
        entry[1] += count
    whole = sum(t for t, _ in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1][0])[:top]
    return {"total_ms": whole / 1000, "top": [{"name": name[:160], "launches": count, "ms": t / 1000,
                                               "share": t / whole} for name, (t, count) in ranked]}


def profile_rows(device: str = "cuda", size: tuple[int, int] = (1024, 2048), batch: int = 16, crop: int = 512,
                 forms=("taps", "fused")) -> list[dict]:
    """The profiles behind the misses: OffSeg-T's FP16 forward at ``size`` and its ``--amp`` training step (batch
    ``batch``, ``crop``), for each CARAFE form."""
    from offseg.train import train_step
    rows = []
    amp = device == "cuda"
    dtype = torch.float16 if amp else torch.float32
    inference = fold_batchnorm(build_model("offseg-t")).to(device, dtype)
    x = torch.randn(1, 3, *size, device=device, dtype=dtype)
    model = build_model("offseg-t").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    images, labels = torch.randn(batch, 3, crop, crop), torch.randint(0, 150, (batch, crop, crop))

    def forward():
        with torch.no_grad():
            inference(x)

    def step():
        train_step(model, [(images, labels)], optimizer, scaler, torch.device(device), amp)

    for form in forms:
        for what, function in ((f"forward {'FP16' if amp else 'FP32'} {size[0]}x{size[1]}", forward),
                               (f"training step {'AMP' if amp else 'FP32'} batch {batch} crop {crop}", step)):
            rows.append({"model": "offseg-t", "what": what, "carafe": form})
            try:
                with forced_form(form):
                    rows[-1].update(busiest(function, device))
            except Exception as error:
                rows[-1]["error"] = error_text(error)
            print(json.dumps(rows[-1]), flush=True)
    return rows


EVAL_SIZES = {"ade20k": (512, 683), "cityscapes": (1024, 2048)}  # scene size per layout: 2 and 3 slide windows
EVAL_RUNS = (("cuda", False, "taps"), ("cuda", True, "taps"), ("cuda", False, "fused"), ("cpu", False, "taps"))


def write_scenes(root: Path, layout: str, count: int) -> None:
    """``count`` synthetic scenes of the layout's size as files in its folder layout (ADE20K: JPEG images and
    zero-reduced PNG labels; Cityscapes: PNG images and train-id labels), so the evaluation decodes files as it
    does on the real datasets."""
    import cv2
    import numpy as np

    from offseg.data import synthetic
    for index in range(count):
        image, labels = synthetic.render_scene(index, *EVAL_SIZES[layout])
        if layout == "ade20k":
            files = {f"ADEChallengeData2016/images/validation/{index:04d}.jpg": image,
                     f"ADEChallengeData2016/annotations/validation/{index:04d}.png":
                         np.where(labels == 255, 0, labels.astype(np.int32) + 1).astype(np.uint8)}
        else:
            files = {f"leftImg8bit/val/city/city_{index:04d}_leftImg8bit.png": image,
                     f"gtFine/val/city/city_{index:04d}_gtFine_labelTrainIds.png": labels}
        for name, array in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), array)


def eval_rows(gpu_images: int, cpu_images: int, runs=EVAL_RUNS, layouts=tuple(EVAL_SIZES)) -> list[dict]:
    """``offseg-eval``'s loop on synthetic scenes saved in each dataset layout (its test protocol, slide windows
    batched) for each (device, CUDA graphs, CARAFE form) run: images/s (``gpu_images`` on a GPU, ``cpu_images`` on
    the CPU), and every run's mIoU on the CPU's images (they must agree)."""
    import tempfile

    from offseg.data.datasets import LAYOUTS, SegmentationDataset
    from offseg.evaluate import evaluate
    from offseg.protocol import TestProtocol
    rows = []
    for layout in layouts:
        with tempfile.TemporaryDirectory(prefix="offseg-gpu-eval-") as folder:
            write_scenes(Path(folder), layout, max(gpu_images, cpu_images, 2))
            dataset = SegmentationDataset(layout, folder, "val")
            protocol = TestProtocol.for_layout(LAYOUTS[layout], None)
            model = build_model("offseg-t", dataset.num_classes).eval()
            for device, graphs, form in runs:
                count = gpu_images if device == "cuda" else cpu_images
                model.to(device)
                with forced_form(form):
                    evaluate(model, dataset, protocol, 2, progress=False, cuda_graphs=graphs)  # warm-up
                    start = time.perf_counter()
                    scores = evaluate(model, dataset, protocol, count, progress=False, cuda_graphs=graphs)
                    seconds = time.perf_counter() - start
                    same = scores if count == cpu_images else evaluate(model, dataset, protocol, cpu_images,
                                                                       progress=False, cuda_graphs=graphs)
                rows.append({"dataset": layout, "size": "x".join(map(str, EVAL_SIZES[layout])),
                             "protocol": protocol.describe(), "device": device, "cuda_graphs": graphs,
                             "carafe": form, "images": count, "images_per_s": count / seconds,
                             "mIoU": float(scores.as_dict(dataset.classes)["mIoU"]),
                             "mIoU_on_the_cpu_images": float(same.as_dict(dataset.classes)["mIoU"])})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=Path("gpu.json"), help="where the results go")
    parser.add_argument("--iters", type=int, default=20, help="timed runs per latency row (default 20)")
    parser.add_argument("--compile", nargs="*", default=["offseg-t@512x512:fused", "offseg-t@1024x2048:fused"],
                        metavar="MODEL@HxW[:FORM]",
                        help="configurations to torch.compile, FORM a CARAFE form (default taps): default "
                             "offseg-t@512x512:fused offseg-t@1024x2048:fused; none: no compile rows")
    parser.add_argument("--quick", action="store_true", help="OffSeg-T at 512x512 only, few iterations (a smoke run)")
    parser.add_argument("--sections", default="latency,training,evaluation,profile,compile",
                        help="comma-separated subset of latency, training, evaluation, profile, compile "
                             "(default: all)")
    args = parser.parse_args(argv)
    chosen = args.sections.split(",")
    unknown = sorted(set(chosen) - {"latency", "training", "evaluation", "profile", "compile"})
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}")
    if not torch.cuda.is_available():
        print("error: benchmarks/gpu.py needs a CUDA GPU (torch sees none)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    models, sizes = (MODELS[:1], SIZES[:1]) if args.quick else (MODELS, SIZES)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    sections = {"latency": lambda: latency_rows(args.iters, models, sizes),
                "training": lambda: training_rows(3 if args.quick else 15, 2 if args.quick else 16),
                "evaluation": lambda: eval_rows(4 if args.quick else 24, 2 if args.quick else 4,
                                               layouts=("ade20k",) if args.quick else tuple(EVAL_SIZES)),
                "profile": lambda: profile_rows(size=(512, 512) if args.quick else (1024, 2048),
                                                batch=2 if args.quick else 16),
                "compile": lambda: compile_rows([] if args.quick else args.compile, args.iters)
                + training_rows(3 if args.quick else 15, 2 if args.quick else 16,
                                ({"amp": True, "compile": "inductor"},
                                 {"amp": True, "compile": "inductor", "carafe": "fused"}))}
    for name in (n for n in sections if n in chosen):  # the report is rewritten after each: a timeout keeps the rest
        try:
            result[name] = sections[name]()
        except Exception as error:  # a failed section is a result; the others still run (GPU time is scarce)
            traceback.print_exc()
            result[name] = {"error": error_text(error)}
            torch.cuda.empty_cache()
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    failed = [name for name in chosen if isinstance(result.get(name), dict)]
    failed_rows = sum(1 for name in chosen if isinstance(result.get(name), list)
                      for row in result[name] if any(key.endswith("error") for key in row))
    print(f"wrote {args.json}" + (f"; failed sections: {', '.join(failed)}" if failed else "")
          + (f"; {failed_rows} row(s) with an error" if failed_rows else ""))
    return 1 if failed or failed_rows else 0


if __name__ == "__main__":
    sys.exit(main())
