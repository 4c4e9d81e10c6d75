"""Peak extra memory of one 512x512 eval forward of OffSeg-T/B/L on CPU, with our CARAFE and with an
unfold-based CARAFE (materializing the k^2-times unfolded tensor) for comparison, measured in one run.

Each measurement runs in a fresh subprocess with a fixed malloc mmap threshold (so freed tensors leave the resident
set instead of staying in the heap); the kernel's peak-RSS counter is reset just before the forward
(``/proc/self/clear_refs``), so the figure is the forward's own high-water mark above the resident model.
Usage: python benchmarks/forward_memory.py [--size H W] [--models offseg-t offseg-b offseg-l]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, torch, torch.nn.functional as F
import offseg.models.freqfusion as freqfusion
from offseg import build_model

def unfold_carafe(x, masks, k, groups, s):
    n, c, h, w = x.shape
    cols = F.unfold(x, k, padding=(k - 1) // 2).reshape(n, c, k * k, h, w)
    if s > 1:
        cols = cols.repeat_interleave(s, -1).repeat_interleave(s, -2)
    return (cols * masks.reshape(n, 1, k * k, s * h, s * w)).sum(2)

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

name, variant, h, w = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
if variant == "unfold":
    freqfusion.carafe = unfold_carafe
model = build_model(name).eval()
x = torch.randn(1, 3, h, w)
with torch.no_grad():
    model(x)  # warm-up: allocator pools and lazy initialisation
    before = rss("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    model(x)
print(json.dumps({"peak_extra_bytes": rss("VmHWM") - before}))
"""


def measure(name: str, variant: str, size: tuple[int, int]) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, "-c", CHILD, name, variant, *map(str, size)],
                            capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--models", nargs="+", default=["offseg-t", "offseg-b", "offseg-l"])
    args = parser.parse_args()
    print("| model | input | peak extra memory, ours | with unfold CARAFE | ratio |")
    print("|---|---|---|---|---|")
    for name in args.models:
        ours, unfold = (measure(name, v, tuple(args.size)) for v in ("ours", "unfold"))
        print(f"| {name} | {args.size[0]} {args.size[1]} | {ours / 2**20:.0f} MiB | {unfold / 2**20:.0f} MiB "
              f"| {unfold / ours:.2f}x |")


if __name__ == "__main__":
    main()
