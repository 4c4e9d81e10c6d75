"""The real cuda-python bindings judge our fake of them (tests/fake_cuda.py) and our adapter (runtime/cuda.py):
cuda-bindings 12 from the dev install, and 13 (what the project's H200 has) installed into a folder of its own.
Everything compared here is visible without a GPU: parameter names, enum values, result shapes without a driver, and
what ``int()`` and ``getPtr()`` of a stream give."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuda_contract import observe
from fake_cuda import FakeCudart

ROOT = Path(__file__).parents[1]
CUDA_BINDINGS_13 = ("cuda-bindings==13.3.1", "cuda-pathfinder==1.9.1")  # the H200's version


@pytest.fixture(scope="module")
def bindings_13(tmp_path_factory) -> Path:
    """A folder holding cuda-bindings 13 (this venv has 12, as the [gpu] extras pin for CUDA 12 drivers)."""
    target = tmp_path_factory.mktemp("cuda-bindings-13")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          *CUDA_BINDINGS_13], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    return target


def run_real(code: str, bindings: Path | None) -> str:
    """``code`` in a fresh interpreter that imports the real bindings (12 from the venv, or those in ``bindings``)."""
    path = [str(ROOT / "tests"), str(ROOT)] + ([str(bindings)] if bindings else [])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def real_bindings(request, major: int) -> Path | None:
    return request.getfixturevalue("bindings_13") if major == 13 else None


@pytest.mark.parametrize("major", [12, 13])
def test_the_fake_runtime_module_behaves_as_the_real_one(request, major):
    bindings = real_bindings(request, major)
    version = run_real("import cuda.bindings; print(cuda.bindings.__version__)", bindings).strip()
    assert version.split(".")[0] == str(major)
    real = json.loads(run_real("import cuda_contract, json; from cuda.bindings import runtime; "
                               "print(json.dumps(cuda_contract.observe(runtime)))", bindings))
    fake = json.loads(json.dumps(observe(FakeCudart("cuda.bindings.runtime", None, major))))
    for part in real:
        assert fake[part] == real[part], f"fake_cuda differs from cuda-bindings {version} in {part}"


@pytest.mark.parametrize("major", [12, 13])
def test_the_adapter_hands_tensorrt_the_stream_handle(request, major):
    """``execute_async_v3`` and every runtime call take the stream's handle: ``int(stream)``, never ``getPtr()``
    (the address of the Python object's field; as a stream it crashed the process on an H200)."""
    code = ("from cuda.bindings import runtime\nfrom runtime.cuda import CudaPython\n"
            "adapter = object.__new__(CudaPython)\nadapter.stream = runtime.cudaStream_t(0x1234)\n"
            "print(adapter.stream_handle)")
    assert int(run_real(code, real_bindings(request, major))) == 0x1234


def test_without_a_driver_the_adapter_says_so_in_one_sentence():
    code = ("from runtime.cuda import open_cuda\nfrom runtime.errors import OffsegError\n"
            "try:\n    open_cuda('cuda-python')\nexcept OffsegError as error:\n    print(error)")
    assert run_real(code, None).strip() == ("no usable CUDA binding: cuda-python: no NVIDIA driver is installed "
                                            "(CUDA reports driver version 0) (pip install 'offseg-deploy[gpu]' for "
                                            "cuda-python, or use an .onnx file on CPU)")


# The TensorRT members our code reads (export/, runtime/, calibration/): their names must exist, and, where both
# products number them alike, their values must agree, in the fake TensorRT 11.1 and the real tensorrt_rtx.
TRT_MEMBERS_READ = {"BuilderFlag": ["TF32"], "DeviceType": ["DLA", "GPU"], "MemoryPoolType": ["WORKSPACE"],
                    "HardwareCompatibilityLevel": ["AMPERE_PLUS"], "NetworkDefinitionCreationFlag": ["STRONGLY_TYPED"],
                    "TensorIOMode": ["INPUT", "OUTPUT"], "DataType": None}  # None: every member
PRODUCT_NUMBERING = {"BuilderFlag"}  # TensorRT-RTX dropped flags and renumbered the rest: names only


def test_the_fake_tensorrt_reads_as_the_real_tensorrt_rtx_where_they_share_members():
    rtx = pytest.importorskip("tensorrt_rtx")
    import fake_tensorrt
    from fake_cuda import FakeGpu
    fake = fake_tensorrt.make_tensorrt("11.1.0", FakeGpu())
    for enum_name, members in TRT_MEMBERS_READ.items():
        real_enum, fake_enum = getattr(rtx, enum_name), getattr(fake, enum_name)
        for member in members or list(real_enum.__members__):
            assert hasattr(fake_enum, member), f"fake TensorRT lacks {enum_name}.{member}"
            if enum_name not in PRODUCT_NUMBERING:
                assert int(getattr(fake_enum, member)) == int(getattr(real_enum, member)), f"{enum_name}.{member}"
    for alias in ("float32", "float16", "bfloat16", "int8", "int32", "int64", "bool"):
        assert int(getattr(fake, alias)) == int(getattr(rtx, alias)), alias
    assert {a for a in dir(rtx.ITensor) if not a.startswith("_")} <= set(
        fake_tensorrt.load_surface("11.1.0")["classes"]["ITensor"]["attributes"])
