"""The chain runs the user's own commands (``offseg-run``, ``offseg-validate``, ``offseg-export``) as child
processes, exactly as a user would, rather than importing their command-line modules."""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from runtime.errors import OffsegError
from runtime.interrupts import describe, signal_of

log = logging.getLogger(__name__)

CHILD_STOP_SECONDS = 20.0  # finalizing a video or a report takes seconds; a build that ignores a stop is killed


def command_path(name: str) -> str:
    """The console script ``name`` of this environment (next to the interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise OffsegError(f"the {name} command is not installed in this environment: pip install -e . (or the "
                          "offseg-deploy package) first")
    return found


def run_command(name: str, argv: list[str]) -> int:
    """Run the console script ``name`` with ``argv`` (see ``run_child``); returns its exit code."""
    return run_child([command_path(name), *argv], name)


def run_step(what: str, name: str, argv: list[str], accepted: tuple[int, ...] = (0,)) -> int:
    """Run the console script ``name`` with ``argv`` as one step of a chain: its exit code, or ``step_failed``'s
    error for a code not ``accepted``."""
    code = run_command(name, argv)
    if code not in accepted:
        raise step_failed(what, name, argv, code)
    return code


def step_failed(what: str, name: str, argv: list[str] | tuple[str, ...], code: int) -> OffsegError:
    """The error for a command run as a child that failed: what failed, its exit code (the child has printed why)
    and the command line that runs that step alone."""
    return OffsegError(f"{what} failed (exit code {code}; its own message is above); to run that step alone: "
                       f"{shlex.join([name, *argv])}")


def run_child(command: list[str], name: str, stop_seconds: float = CHILD_STOP_SECONDS) -> int:
    """Run ``command`` on this terminal, in a process group of its own; returns its exit code.

    Its own group, so that the child gets one stop signal, from here: a Ctrl-C or SIGTERM that stops this process
    is passed on to the child's group, which then has ``stop_seconds`` to finalize its outputs and exit before it
    is killed (SIGKILL). The interrupt then goes on here, so the caller stops too.
    """
    child = subprocess.Popen(command, start_new_session=True)
    try:
        return child.wait()
    except KeyboardInterrupt as interrupt:
        _stop(child, name, interrupt, stop_seconds)
        raise


def _stop(child: subprocess.Popen, name: str, interrupt: KeyboardInterrupt, seconds: float) -> None:
    number = signal_of(interrupt)
    log.warning("%s: passing %s on to %s (pid %d) and waiting up to %g s for it to finish its outputs",
                describe(interrupt), number.name, name, child.pid, seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, number)
    try:
        child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        log.warning("%s (pid %d) did not stop within %g s: killed", name, child.pid, seconds)


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
    """``plan``, an fp16 or int8 engine built from ``onnx_path`` by ``offseg-export``; an existing one is kept only
    when its sidecar records this very ONNX file (its sha256) and precision."""
    if _built_from(plan, onnx_path, precision):
        log.info("reusing %s (built from this %s)", plan, onnx_path.name)
        return plan
    run_step(f"building the {precision} engine", "offseg-export", engine_args(onnx_path, plan, precision))
    return plan


def _built_from(plan: Path, onnx_path: Path, precision: str) -> bool:
    """Whether ``plan``'s sidecar says it is the ``precision`` engine of the ONNX file ``onnx_path`` as it is now."""
    from calibration.files import file_sha256
    from runtime.engine_meta import read_sidecar, sidecar_path
    if not plan.is_file() or not sidecar_path(plan).is_file():
        return False
    try:
        sidecar = read_sidecar(plan)
    except OffsegError as error:
        log.warning("rebuilding %s: %s", plan, error)
        return False
    recorded = sidecar["onnx"].get("file_sha256") if isinstance(sidecar.get("onnx"), dict) else None
    return recorded == file_sha256(onnx_path) and sidecar.get("precision") == precision
