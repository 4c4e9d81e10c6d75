"""A real Triton Inference Server on loopback for tests, and the real client packages, fetched from PyPI:

- ``tritonclient[grpc,http]`` 2.73.0, installed with ``pip --target`` (not in ``[dev]``: it pins ml-dtypes<=0.5.4,
  which clashes with the fp16 extra's 0.6.0) and appended to ``sys.path``, so the venv's own packages win;
- the ``tritonserver`` binary, its Python backend and the stub for this Python from the ``nvidia-pytriton`` 0.7.0
  wheel (it starts on a CPU machine; it has no ONNX Runtime or TensorRT backend);
- a Python environment for the server's Python backend: numpy<2 and onnxruntime (pytriton 0.7.0's stub copies
  numpy 2 arrays wrongly, measured: see ``export/triton_python_model.py``);
- ``perf_analyzer`` from the ``tritonclient`` 2.50.0 wheel (the last ones that carry it; today's ``perf-analyzer``
  on PyPI is a placeholder), its two shared libraries taken from the pytriton wheel.

Anything that cannot be fetched makes the tests that need it skip with the reason.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

TRITONCLIENT = "tritonclient[grpc,http]==2.73.0"
PYTRITON = "nvidia-pytriton==0.7.0"
PERF_ANALYZER_WHEEL = "tritonclient==2.50.0"
START_SECONDS = 90


def pip(*args: str, timeout: float = 600) -> None:
    """pip in this interpreter; pytest.skip when PyPI cannot be reached or the package does not install here."""
    result = subprocess.run([sys.executable, "-m", "pip", "-q", *args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode:
        pytest.skip(f"pip {' '.join(args)} failed: {result.stderr.strip().splitlines()[-1:]}")


def install_tritonclient(folder: Path) -> Path:
    """The real tritonclient in ``folder`` (added to the end of sys.path); returns ``folder``."""
    if not (folder / "tritonclient").is_dir():
        pip("install", "--target", str(folder), TRITONCLIENT)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return folder


def _wheel(folder: Path, requirement: str) -> Path:
    pip("download", "--no-deps", "--dest", str(folder), requirement)
    name = requirement.split("==")[0].replace("-", "_")
    return next(folder.glob(f"{name}-*.whl"))


def install_server(folder: Path) -> Path:
    """``folder``/tritonserver with bin/, backends/python (stub for this Python) and libs/; returns it."""
    server = folder / "tritonserver"
    if server.is_dir():
        return server
    unpacked = folder / "pytriton"
    with zipfile.ZipFile(_wheel(folder, PYTRITON)) as wheel:
        wheel.extractall(unpacked)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = unpacked / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"{PYTRITON} has no Python backend stub for Python {version}")
    shutil.copytree(unpacked / "pytriton" / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_*"))
    shutil.copy2(stub, server / "backends" / "python" / stub.name)
    shutil.copytree(unpacked / "nvidia_pytriton.libs", server / "libs")
    for path in (server / "bin" / "tritonserver", server / "backends" / "python" / stub.name):
        path.chmod(0o755)
    return server


def install_server_python(folder: Path) -> Path:
    """A venv with what the repository's model.py imports, under the numpy ABI of pytriton's stub; returns its
    ``bin`` folder (put first on the server's PATH, the stub embeds the ``python3`` it finds there)."""
    env = folder / "server-python"
    if not (env / "bin" / "python3").exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
        result = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "-q", "install", "numpy<2",
                                 "onnxruntime==1.32.0"], capture_output=True, text=True, timeout=600)
        if result.returncode:
            pytest.skip(f"the server's Python environment did not install: {result.stderr.strip()[-300:]}")
    return env / "bin"


def install_perf_analyzer(folder: Path, server: Path) -> tuple[Path, dict[str, str]]:
    """(perf_analyzer, its environment): the binary from the tritonclient 2.50.0 wheel; libb64 and libcudart from
    the pytriton wheel's libraries under the names it links."""
    binary = folder / "perf_analyzer"
    libs = folder / "perf_analyzer_libs"
    if not binary.is_file():
        with zipfile.ZipFile(_wheel(folder, PERF_ANALYZER_WHEEL)) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith("/bin/perf_analyzer"))
            binary.write_bytes(wheel.read(member))
        binary.chmod(0o755)
        libs.mkdir()
        for link, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
            (libs / link).symlink_to(next((server / "libs").glob(pattern)))
    return binary, {**os.environ, "LD_LIBRARY_PATH": str(libs)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(server: Path, repository: Path, log: Path, python_bin: Path):
    """tritonserver on loopback ports serving ``repository``; yields (http_port, grpc_port); stopped on exit."""
    process, http, grpc = start_server(server, repository, log, python_bin)
    try:
        yield http, grpc
    finally:
        stop_server(process)


def start_server(server: Path, repository: Path, log: Path, python_bin: Path,
                 ports: tuple[int, int] | None = None) -> tuple[subprocess.Popen, int, int]:
    """tritonserver serving ``repository`` on loopback ``ports`` (HTTP, gRPC; default free ones), once ready:
    (process, http_port, grpc_port). The Python backend's stub embeds Python and finds its packages through the
    ``python3`` in ``python_bin``."""
    http, grpc = ports or (free_port(), free_port())
    env = {**os.environ, "LD_LIBRARY_PATH": str(server / "libs"),
           "PATH": f"{python_bin}{os.pathsep}{os.environ['PATH']}"}
    command = [str(server / "bin" / "tritonserver"), "--model-repository", str(repository),
               "--backend-directory", str(server / "backends"), "--cache-directory", str(server / "caches"),
               "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address", "127.0.0.1",
               "--grpc-port", str(grpc), "--allow-metrics", "false", "--exit-timeout-secs", "5"]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    deadline = time.monotonic() + START_SECONDS
    while not _ready(http):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            raise AssertionError(f"tritonserver did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return process, http, grpc


def stop_server(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a ``start_server`` process group with ``sig`` (SIGKILL: a crash), at worst by SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
