"""The device side (a Jetson: no torch, TensorRT from JetPack): the ONNX-to-engine CLI and the runtime import and run
without torch, up to the one sentence that says TensorRT is missing."""
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tiny_onnx import write_tiny_onnx

ROOT = Path(__file__).parents[1]
NOT_INSTALLED = "error: TensorRT is not installed"


def test_engine_build_from_onnx_runs_without_torch_up_to_tensorrt(tmp_path):
    onnx_path = write_tiny_onnx(tmp_path / "m.onnx")
    code = textwrap.dedent(f"""
        import sys
        for name in ("torch", "tensorrt", "tensorrt_rtx"):
            sys.modules[name] = None  # `import torch` (or TensorRT) now raises ImportError
        from export.cli import main
        code = main(["--onnx", {str(onnx_path)!r}, "--format", "engine", "--fp16"])
        assert not any(name.startswith("torch.") for name in sys.modules), "a torch submodule was imported"
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(NOT_INSTALLED) and len(result.stderr.strip().splitlines()) == 1, result.stderr


def _python310() -> str | None:
    """A Python 3.10 interpreter (JetPack 6's), or None; pyenv shims that do not run are skipped."""
    for candidate in (os.environ.get("OFFSEG_PYTHON310"), str(Path.home() / ".pyenv/versions/3.10.13/bin/python"),
                      shutil.which("python3.10")):
        if candidate and subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"],
                                        capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.mark.slow
def test_jetson_rehearsal_in_a_python310_venv_without_torch(tmp_path):
    """JetPack 6's Python is 3.10: install offseg-deploy[jetson] (no torch) in a fresh venv, then build and run."""
    python = _python310()
    if python is None:
        pytest.skip("no Python 3.10 here (set OFFSEG_PYTHON310)")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", f"{ROOT}[jetson]"], capture_output=True, text=True)
    if pip.returncode != 0 and "Could not find a version" in pip.stderr + pip.stdout:
        pytest.skip(f"the package index is unreachable: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr
    version = subprocess.run([str(venv / "bin/python"), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout
    assert version.strip() == "(3, 10)"
    no_torch = subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True, text=True)
    assert "No module named 'torch'" in no_torch.stderr
    onnx_path = write_tiny_onnx(tmp_path / "m.onnx")
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "m.plan").write_bytes(b"an engine")
    for command in ([str(venv / "bin/offseg-export"), "--onnx", str(onnx_path), "--format", "engine", "--fp16"],
                    [str(venv / "bin/offseg-run"), "--engine", str(tmp_path / "m.plan"), "--image", str(image)]):
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(NOT_INSTALLED), result.stderr


@pytest.mark.parametrize("require, code, summary", [("1", 1, "error"), ("0", 0, "skipped")])
def test_gpu_tests_fail_instead_of_skipping_when_a_gpu_is_required(tmp_path, require, code, summary):
    test = tmp_path / "test_needs_gpu.py"
    test.write_text("import pytest\n\n\n@pytest.mark.gpu\ndef test_engine():\n    pytest.importorskip('tensorrt')\n")
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q",
                             "-m", "gpu", "-o", "markers=gpu", str(test)], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "OFFSEG_REQUIRE_GPU": require})
    assert result.returncode == code and f"1 {summary}" in result.stdout, result.stdout
    if require == "1":
        assert "OFFSEG_REQUIRE_GPU=1 but this gpu test was skipped" in result.stdout


def test_cuda_python_is_pinned_below_13_for_cuda12_hosts_and_jetpack6():
    """cuda-python 13 links the CUDA 13 runtime: on a CUDA 12 driver (JetPack 6) every CUDA call fails."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("gpu", "gpu-trt11", "jetson"):
        assert "cuda-python>=12.6,<13" in extras[extra], extra
    assert "tensorrt-cu12>=10.3,<11" in extras["gpu"] and "tensorrt-cu12>=11,<12" in extras["gpu-trt11"]
