import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the `reference`, `tiny_onnx` and fake helper modules

REQUIRE_GPU = "OFFSEG_REQUIRE_GPU"


def _share_cores_between_workers() -> None:
    """Each pytest-xdist worker (and the CLIs it starts, through the environment) gets its share of the cores as
    OpenMP threads, unless OMP_NUM_THREADS is set. PyTorch's OpenMP threads spin at every op's barrier: with two
    workers each running 2-thread PyTorch on 2 cores, eager OffSeg ran 16x slower (benchmarks/README.md)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


_share_cores_between_workers()


def _expose_system_gi() -> None:
    """Debian's python3-gi (GStreamer tests) when this Python has no PyGObject and Debian's is built for its minor
    version: only the ``gi`` package is added to the path (a symlink in a folder of its own), nothing else of
    /usr/lib/python3/dist-packages. Subprocesses get it through PYTHONPATH."""
    import importlib.util
    import shutil
    import atexit
    import tempfile
    if importlib.util.find_spec("gi") is not None:
        return
    system_gi = Path("/usr/lib/python3/dist-packages/gi")
    if not any(system_gi.glob(f"_gi.cpython-{sys.version_info.major}{sys.version_info.minor}-*.so")):
        return
    folder = Path(tempfile.mkdtemp(prefix="offseg-system-gi."))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "gi").symlink_to(system_gi)
    sys.path.append(str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(folder))))


_expose_system_gi()


def _has_gpu() -> bool:
    from runtime.device import cuda_device
    return cuda_device() is not None


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With OFFSEG_REQUIRE_GPU=1 (the GPU workflow) a skipped ``gpu`` test fails: a missing GPU, TensorRT or CUDA
    binding must not turn the GPU job green."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and "gpu" in item.keywords and os.environ.get(REQUIRE_GPU) == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_GPU}=1 but this gpu test was skipped: {reason}"


@pytest.fixture(scope="session")
def dynamic_onnx(tmp_path_factory):
    """OffSeg-T exported once per test process with dynamic batch, height and width, from the official-format
    reference checkpoint (tests using it share the xdist group "dynamic", so one process exports it)."""
    import torch

    import reference
    from export.cli import main as export_main
    folder = tmp_path_factory.mktemp("dynamic")
    checkpoint = folder / "official.pth"
    torch.save({"meta": {}, "state_dict": reference.official_state_dict("offseg-t")}, checkpoint)
    path = folder / "t.onnx"
    assert export_main(["--model", "offseg-t", "--checkpoint", str(checkpoint), "--dynamic", "--input-size", "256",
                        "256", "--output", str(path), "--no-check"]) == 0  # parity: test_export_dynamic.py
    return path
