"""Peak resident memory and wall time of ``offseg-export`` (ONNX with its default parity check) per model and size.

Each export runs in its own process; the figure is that process's high-water mark (ru_maxrss), so it includes
torch, the exporter, onnxslim and the ONNX Runtime check.
Usage: python benchmarks/export_memory.py [--models offseg-t ...] [--sizes 512x512 1024x2048]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from procmem import run_traced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["offseg-t"])
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x2048"])
    args = parser.parse_args()
    rows = ["| model | input size | peak resident MiB | seconds | ONNX MiB |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            for size in args.sizes:
                output = Path(folder) / f"{model}-{size}.onnx"
                trace = run_traced([shutil.which("offseg-export") or "offseg-export", "--model", model,
                                    "--input-size", *size.split("x"), "--output", str(output)])
                if trace.exit_code != 0:
                    print(f"offseg-export failed for {model} {size} (exit {trace.exit_code})")
                    return 1
                rows.append(f"| {model} | {size} | {trace.peak_mib:.0f} | {trace.seconds:.0f} | "
                            f"{output.stat().st_size / 2 ** 20:.1f} |")
                print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
