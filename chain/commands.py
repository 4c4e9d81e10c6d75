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
