"""Eager PyTorch OffSeg on a CPU that another PyTorch process shares, measured in one run.

PyTorch's OpenMP threads spin at the barrier that ends every parallel op; when two processes each start one thread
per core, a spinning thread holds a core the other process's threads wait for, and a forward of ~1,700 small ops
slows down far more than twice. For each thread setting this times an OffSeg-T eager forward alone and beside a
second process running the same forward in a loop, and prints the ratios to the default setting alone.

``python benchmarks/cpu_contention.py [--size 128 224] [--runs 20] [--json out.json]``
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {  # name -> environment added to the timed process and to the competing one
    "default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_NUM_THREADS=cores/2": {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))},
}


def model_and_input(size: tuple[int, int]):
    """OffSeg-T (9 classes, eval) and a random (1, 3, H, W) input."""
    import torch
    from offseg import build_model
    return build_model("offseg-t", num_classes=9).eval(), torch.randn(1, 3, *size)


def forward_ms(size: tuple[int, int], runs: int) -> float:
    """Median milliseconds of an OffSeg-T eager forward at ``size`` in this process."""
    import torch
    model, x = model_and_input(size)
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(x)
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def forward_loop(size: tuple[int, int]) -> None:
    """The competing process: the same forward until killed."""
    import torch
    model, x = model_and_input(size)
    with torch.no_grad():
        while True:
            model(x)


def measure(setting: dict, size: tuple[int, int], runs: int, shared: bool) -> float:
    env = {**os.environ, **setting}
    args = [str(v) for v in size]
    competitor = None
    if shared:
        competitor = subprocess.Popen([sys.executable, __file__, "--loop", *args], env=env)
        time.sleep(5)  # its model is built and it is in its loop
    try:
        out = subprocess.run([sys.executable, __file__, "--time", *args, str(runs)], env=env, check=True,
                             capture_output=True, text=True).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(128, 224), metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--time", type=int, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--loop", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time:
        print(forward_ms(tuple(args.time[:2]), args.time[2]))
        return
    if args.loop:
        forward_loop(tuple(args.loop))
        return
    size = tuple(args.size)
    rows = [{"setting": name, "alone_ms": measure(env, size, args.runs, False),
             "shared_ms": measure(env, size, args.runs, True)} for name, env in SETTINGS.items()]
    base = rows[0]["alone_ms"]
    print(f"OffSeg-T eager forward {size[0]}x{size[1]}, {os.cpu_count()} cores, median of {args.runs}; "
          f"ratios to the default setting alone")
    print(f"{'setting':26} {'alone ms':>9} {'ratio':>6} {'shared ms':>10} {'ratio':>6}")
    for row in rows:
        print(f"{row['setting']:26} {row['alone_ms']:9.1f} {row['alone_ms'] / base:5.2f}x "
              f"{row['shared_ms']:10.1f} {row['shared_ms'] / base:5.2f}x")
    if args.json:
        from runtime.sinks import write_file
        write_file(args.json, json.dumps({"size": list(size), "cores": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
