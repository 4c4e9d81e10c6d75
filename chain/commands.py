"""The chain runs the user's own commands (``offseg-run``, ``offseg-validate``, ``offseg-export``) as child
processes, exactly as a user would, rather than importing their command-line modules."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from runtime.errors import OffsegError
from runtime.interrupts import Terminated


def command_path(name: str) -> str:
    """The console script ``name`` of this environment (next to the interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise OffsegError(f"the {name} command is not installed in this environment: pip install -e . (or the "
                          "offseg-deploy package) first")
    return found


def run_command(name: str, argv: list[str]) -> int:
    """Run ``name argv`` (output to this process's terminal); returns its exit code.

    The child runs in a process group of its own, and the interrupt that reaches this process (Ctrl-C: SIGINT,
    or SIGTERM) is forwarded to it once: it finalizes its outputs and exits, and this waits for that before
    passing the interrupt on, so no output is left half-written.
    """
    child = subprocess.Popen([command_path(name), *argv], process_group=0)
    try:
        return child.wait()
    except KeyboardInterrupt as interrupt:
        child.send_signal(signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
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


def engine_args(onnx_path: Path, plan: Path, precision: str) -> list[str]:
    """``offseg-export``'s arguments that build an fp16 or int8 (calibrated on synthetic scenes) engine."""
    flags = ["--fp16"] if precision == "fp16" else ["--int8", "--calib-data", "synthetic"]
    return ["--onnx", str(onnx_path), "--format", "engine", "--output", str(plan), *flags]


def build_engine(onnx_path: Path, plan: Path, precision: str) -> Path:
    """``plan``, an fp16 or int8 engine built from ``onnx_path`` by ``offseg-export`` (kept when it exists)."""
    if not plan.is_file() and run_command("offseg-export", engine_args(onnx_path, plan, precision)) != 0:
        raise OffsegError(f"building the {precision} engine failed")
    return plan
