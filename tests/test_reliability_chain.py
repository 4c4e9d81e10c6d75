"""The orchestrators' child commands under stop signals: a SIGINT or SIGTERM sent to the orchestrator alone (``kill
PID``, ``docker stop``, systemd's KillMode=process) is passed on to the running child, which gets a bounded time to
finish its outputs, then is killed."""
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

ORCHESTRATOR = """
import argparse, sys
from chain.commands import run_child
from runtime.console import add_common_options, run
parser = argparse.ArgumentParser()
add_common_options(parser)
sys.exit(run(lambda args: run_child([sys.executable, "-c", {child!r}], "the child", {seconds}), parser, []))
"""
STOPS = """
import sys, time
from runtime.interrupts import exit_code, stop_signals
print("child ready", flush=True)
try:
    with stop_signals():
        time.sleep(600)
except KeyboardInterrupt as interrupt:
    print(f"child finished its outputs, exit {exit_code(interrupt)}", flush=True)
    sys.exit(exit_code(interrupt))
"""
IGNORES = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("child ready", flush=True)
time.sleep(600)
"""


def stop_orchestrator(child: str, seconds: float, number: int) -> tuple[subprocess.Popen, str, str, int]:
    """Start an orchestrator running ``child``, signal the orchestrator alone once the child runs; returns the
    finished orchestrator, its stdout and stderr (the child's are the same pipes) and the child's pid."""
    code = ORCHESTRATOR.format(child=textwrap.dedent(child), seconds=seconds)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert process.stdout.readline() == "child ready\n"
        process.send_signal(number)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    passed = re.search(rf"passing {signal.Signals(number).name} on to the child \(pid (\d+)\)", stderr)
    assert passed, stderr[-2000:]
    return process, stdout, stderr, int(passed[1])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_the_orchestrator_reaches_its_child(number):
    process, stdout, stderr, child = stop_orchestrator(STOPS, 20, number)
    assert f"child finished its outputs, exit {128 + number}" in stdout
    assert process.returncode == 128 + number and "Traceback" not in stderr and "killed" not in stderr
    assert gone(child)


def test_a_child_that_ignores_the_stop_is_killed_after_the_bounded_wait():
    process, _, stderr, child = stop_orchestrator(IGNORES, 1, signal.SIGTERM)
    assert "the child (pid" in stderr and "did not stop within 1 s: killed" in stderr
    assert process.returncode == 143 and "Traceback" not in stderr
    assert gone(child)
