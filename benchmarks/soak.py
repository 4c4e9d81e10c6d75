"""Soak test of ``offseg-run``: peak resident memory and memory growth over a long 1080p video.

Renders a synthetic video (``--unique-frames`` frames played forwards and backwards up to ``--frames``), exports the
model to ONNX (both cached in ``--workdir``), runs ``offseg-run --video ... --output ...`` in a subprocess and samples
its resident memory twice a second. Reports the peak, the memory after warm-up and at the end, and the growth from a
least-squares fit over the run after warm-up (the first 10% of the time). Exits 1 when the fitted growth over the
whole run exceeds ``--max-growth-mib``.
Usage: python benchmarks/soak.py [--frames 2000] [--model offseg-t] [--size 512 512] [--video-size 1080 1920]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from procmem import run_traced

HERE = Path(__file__).parent


def soak_video(path: Path, frames: int, unique: int, size: tuple[int, int]) -> Path:
    """A ``frames``-long video of ``unique`` rendered frames played back and forth (cached by name)."""
    from offseg.data.synthetic import render_video
    from runtime.sinks import VideoSink
    if path.is_file():
        return path
    print(f"rendering {unique} frames at {size[1]}x{size[0]} ...", flush=True)
    rendered = [image for image, _ in render_video(seed=3, frames=unique, height=size[0], width=size[1])]
    order = rendered + rendered[-2:0:-1]
    sink = VideoSink(path, 30.0, size)
    try:
        for i in range(frames):
            sink.write(order[i % len(order)])
    finally:
        sink.close()
    return path


def growth(samples: list[tuple[float, float]], warmup_fraction: float = 0.1) -> tuple[float, float, float]:
    """(MiB after warm-up, MiB at the end, fitted MiB growth from warm-up to the end)."""
    t, rss = np.array(samples).T
    kept = t >= t[-1] * warmup_fraction
    slope = np.polyfit(t[kept], rss[kept], 1)[0]
    return float(rss[kept][0]), float(rss[-1]), float(slope * (t[-1] - t[kept][0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="offseg-t")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"), help="model input")
    parser.add_argument("--video-size", type=int, nargs=2, default=(1080, 1920), metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--unique-frames", type=int, default=120)
    parser.add_argument("--max-growth-mib", type=float, default=32.0)
    parser.add_argument("--workdir", type=Path, default=HERE / ".cache")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    h, w = args.video_size
    video = soak_video(args.workdir / f"soak-{h}x{w}-{args.frames}.mp4", args.frames, args.unique_frames, (h, w))
    onnx = args.workdir / f"soak-{args.model}-{args.size[0]}x{args.size[1]}.onnx"
    if not onnx.is_file():
        subprocess.run(["offseg-export", "--model", args.model, "--input-size", *map(str, args.size),
                        "--output", str(onnx)], check=True)
    summary = args.workdir / "soak-run.json"
    print(f"offseg-run on {args.frames} frames at {w}x{h} ...", flush=True)
    trace = run_traced([shutil.which("offseg-run") or "offseg-run", "--engine", str(onnx), "--video", str(video),
                        "--output", str(args.workdir / "soak-out.mp4"), "--summary", str(summary), "--no-progress"])
    if trace.exit_code != 0:
        print(f"offseg-run failed (exit {trace.exit_code})", file=sys.stderr)
        return 2
    run = json.loads(summary.read_text())
    start, end, grown = growth(trace.samples)
    report = {"model": args.model, "input_size": list(args.size), "video_size": [h, w], "frames": run["frames"],
              "fps": run["fps"], "seconds": trace.seconds, "peak_rss_mib": trace.peak_mib,
              "rss_after_warmup_mib": start, "rss_at_end_mib": end, "fitted_growth_mib": grown,
              "growth_mib_per_1000_frames": 1000 * grown / max(run["frames"] * 0.9, 1)}
    print(f"{report['frames']} frames, {report['fps']:.2f} FPS, {trace.seconds / 60:.1f} min; resident memory: "
          f"peak {trace.peak_mib:.0f} MiB, after warm-up {start:.0f} MiB, at the end {end:.0f} MiB, "
          f"fitted growth {grown:+.1f} MiB ({report['growth_mib_per_1000_frames']:+.1f} MiB per 1000 frames)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if grown > args.max_growth_mib:
        print(f"memory grew by more than {args.max_growth_mib:g} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
