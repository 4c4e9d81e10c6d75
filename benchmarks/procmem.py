"""Run a command and watch its memory: resident set sampled from /proc while it runs, peak from the kernel (Linux)."""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field


@dataclass
class MemoryTrace:
    exit_code: int
    seconds: float
    peak_mib: float  # the child's own high-water mark (ru_maxrss)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, resident MiB)


def _resident_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_traced(command: list[str], interval: float = 0.5) -> MemoryTrace:
    """Run ``command`` to the end, sampling its resident memory every ``interval`` seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    samples = []
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        rss = _resident_mib(process.pid)
        if rss is not None:
            samples.append((time.perf_counter() - start, rss))
        time.sleep(interval)
    process.returncode = os.waitstatus_to_exitcode(status)
    return MemoryTrace(process.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024, samples)
