"""The chain runs the user's own commands (``offseg-run``, ``offseg-validate``, ``offseg-export``) as child
processes, exactly as a user would, rather than importing their command-line modules."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from runtime.errors import OffsegError


def command_path(name: str) -> str:
    """The console script ``name`` of this environment (next to the interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise OffsegError(f"the {name} command is not installed in this environment: pip install -e . (or the "
                          "offseg-deploy package) first")
    return found


def run_command(name: str, argv: list[str]) -> int:
    """Run ``name argv`` with this process's terminal; returns its exit code.

    Ctrl-C reaches the child too (same process group): it finalizes its outputs and exits, and this waits for that
    before passing the interrupt on, so no output is left half-written.
    """
    child = subprocess.Popen([command_path(name), *argv])
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.wait()
        raise


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built and run here (None: they can)."""
    from runtime.device import cuda_device, module_installed
    if not module_installed("tensorrt"):
        return "TensorRT is not installed here"
    if cuda_device() is None:
        return "no CUDA GPU"
    return None


def build_engine(onnx_path: Path, plan: Path, precision: str) -> Path:
    """``plan``, an fp16 or int8 engine built from ``onnx_path`` by ``offseg-export`` (kept when it exists)."""
    if not plan.is_file():
        flags = ["--fp16"] if precision == "fp16" else ["--int8", "--calib-data", "synthetic"]
        if run_command("offseg-export", ["--onnx", str(onnx_path), "--format", "engine", "--output", str(plan),
                                         *flags]) != 0:
            raise OffsegError(f"building the {precision} engine failed")
    return plan
