"""Compute ops per inference forward of OffSeg-T/B/L for each CARAFE form, counted on the CPU in one run: an estimate
of the CUDA kernels a forward launches (the GPU figure is benchmarks/gpu.py's profiler count), for the issue's
target of at most 600 per OffSeg-T forward.

Every ATen call of a repeated forward (BatchNorm folded; the same size again, so the position biases the first
resampled are reused, as in ``offseg-eval``'s slide windows) is recorded; views and allocations, which launch
nothing on a GPU, are left out. Each fused-form operator (one Triton launch) counts as one op: its
kernel runs through Triton's interpreter here, whose own tensor copies are not counted. The count depends on the
graph, not on the input size. Usage: TRITON_INTERPRET=1 python benchmarks/forward_ops.py [--size H W] [--models ...]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

FORMS = ("taps", "unfold", "fused")


def count_ops(name: str, size: tuple[int, int], form: str) -> collections.Counter:
    import torch

    import offseg.models.carafe_fused  # noqa: F401  (registers the fused form's operator)
    from aten_calls import NO_KERNEL, RecordedCalls
    from offseg import build_model
    from offseg.models.carafe import forced_form
    from offseg.models.fold import fold_batchnorm

    torch.manual_seed(0)
    model = fold_batchnorm(build_model(name))
    x = torch.randn(1, 3, *size)
    with torch.no_grad(), forced_form(form):
        model(x)
        with RecordedCalls() as recorder:  # an operator's inside is not recorded
            model(x)
    ops = [call.split(".")[1] if call.startswith("aten.") else call for call in recorder.calls]
    return collections.Counter(op for op in ops if op not in NO_KERNEL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--models", nargs="+", default=["offseg-t", "offseg-b", "offseg-l"])
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("set TRITON_INTERPRET=1 (the fused form's kernel runs through Triton's interpreter on the CPU)")
    rows = []
    for name in args.models:
        for form in FORMS:
            ops = count_ops(name, tuple(args.size), form)
            rows.append({"model": name, "carafe": form, "ops": sum(ops.values()),
                         "most_common": dict(ops.most_common(6))})
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
