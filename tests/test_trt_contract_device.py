"""The device side (a Jetson: no torch, TensorRT from JetPack): the ONNX-to-engine CLI and the runtime import and run
without torch, up to the one sentence that says TensorRT is missing."""
import json
import os
import re
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


def assert_build_and_run_stop_at_missing_tensorrt(bin_dir: Path, folder: Path) -> None:
    """``offseg-export --format engine`` and ``offseg-run --engine x.plan`` of an install in ``bin_dir`` both end with
    the one sentence that TensorRT is missing (exit 2, no traceback)."""
    onnx_path = write_tiny_onnx(folder / "m.onnx")
    image = folder / "frame.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    (folder / "m.plan").write_bytes(b"an engine")
    for command in ([str(bin_dir / "offseg-export"), "--onnx", str(onnx_path), "--format", "engine", "--fp16"],
                    [str(bin_dir / "offseg-run"), "--engine", str(folder / "m.plan"), "--image", str(image)]):
        result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(NOT_INSTALLED), result.stderr


OPENCV = "opencv-python-headless==4.10.0.84"  # a NumPy 1.x build, like JetPack 6's OpenCV


def readme_jetson_packages() -> list[str]:
    """The packages the README's Jetson section installs after ``pip install --no-deps offseg-deploy``."""
    section = (ROOT / "README.md").read_text().split("### Jetson (JetPack 6)", 1)[1].split("\n### ", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith("pip install '"))
    return re.findall(r"'([^']+)'", line.split("#")[0])


def test_the_readme_jetson_install_is_the_jetson_extra_without_opencv():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = {r for r in project["dependencies"] + project["optional-dependencies"]["jetson"] if "opencv" not in r}
    readme = set(readme_jetson_packages())
    assert "numpy>=1.24,<2" in readme  # JetPack's OpenCV is built against NumPy 1.x
    assert readme - {"numpy>=1.24,<2"} == expected - {"numpy>=1.24,<3"}
    assert "pip install --no-deps offseg-deploy" in (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_jetson_rehearsal_in_a_python310_venv_without_torch(tmp_path):
    """JetPack 6's Python is 3.10: install as the README's Jetson section says (no torch) in a fresh venv, then
    build and run."""
    python = _python310()
    if python is None:
        pytest.skip("no Python 3.10 here (set OFFSEG_PYTHON310)")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", str(ROOT)], check=True)  # as the README
    # the README's packages, and pip's OpenCV standing in for JetPack's (which the venv would see)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", *readme_jetson_packages(), OPENCV],
                         capture_output=True, text=True)
    if pip.returncode != 0 and "Could not find a version" in pip.stderr + pip.stdout:
        pytest.skip(f"the package index is unreachable: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr
    version = subprocess.run([str(venv / "bin/python"), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout
    assert version.strip() == "(3, 10)"
    no_torch = subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True, text=True)
    assert "No module named 'torch'" in no_torch.stderr
    assert_build_and_run_stop_at_missing_tensorrt(venv / "bin", tmp_path)


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
    for extra in ("gpu", "gpu-trt11"):
        assert "cuda-python>=12.6,<13" in extras[extra] and "onnx==1.23.2" in extras[extra], extra
    assert "cuda-python>=12.2,<12.3" in extras["jetson"]
    assert "tensorrt-cu12>=10.3,<11" in extras["gpu"] and "tensorrt-cu12>=11,<12" in extras["gpu-trt11"]


@pytest.mark.parametrize("extra, wheel_tag", [("jetson", "manylinux2014_aarch64")])
def test_the_jetson_cuda_python_pin_resolves_a_manylinux2014_wheel_on_jetpack6(tmp_path, extra, wheel_tag):
    """On Python 3.10 / aarch64 (JetPack 6), cuda-python 12.6+ resolves to cuda-bindings 12.9's manylinux_2_28 wheel,
    an SBSA (server ARM) build; the [jetson] pin resolves the manylinux2014 wheel NVIDIA's TensorRT 10.3 samples
    use. Asks PyPI what pip would install for that platform."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    requirement = next(r for r in extras[extra] if r.startswith("cuda-python"))
    report = tmp_path / "report.json"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--no-deps",
                          "--only-binary=:all:", "--python-version", "3.10", "--platform", "manylinux_2_35_aarch64",
                          "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
                          "--target", str(tmp_path / "t"), "--report", str(report), requirement],
                         capture_output=True, text=True)
    if pip.returncode != 0 and "Could not find a version" in pip.stderr:
        pytest.skip(f"the package index is unreachable: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr
    wheel = json.loads(report.read_text())["install"][0]["download_info"]["url"].rsplit("/", 1)[1]
    assert wheel.endswith(f"{wheel_tag}.whl") and "cp310" in wheel, wheel


@pytest.mark.slow
def test_the_gpu_extras_reach_tensorrt_is_not_installed_in_a_fresh_venv(tmp_path):
    """What README's `pip install 'offseg-deploy[gpu]'` (or [gpu-trt11]) installs, less TensorRT (its wheels
    download from NVIDIA's index only), in a fresh venv without torch: building an engine and running one get as far
    as the one sentence that says TensorRT is missing, with no traceback (a missing onnx gave one)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = sorted({r for extra in ("gpu", "gpu-trt11") for r in extras["optional-dependencies"][extra]
                           if not r.startswith("tensorrt")} | set(extras["dependencies"]))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True)
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = subprocess.run([str(env / "bin/pip"), "install", "-q", *requirements,
                          str(next((tmp_path / "dist").glob("offseg_deploy-*.whl")))], capture_output=True, text=True)
    if pip.returncode != 0 and "Could not find a version" in pip.stderr + pip.stdout:
        pytest.skip(f"the package index is unreachable: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr
    assert_build_and_run_stop_at_missing_tensorrt(env / "bin", tmp_path)
