"""The real cuda-python bindings judge our fake of them (tests/fake_cuda.py) and our adapter (runtime/cuda.py):
cuda-python 12.9 from the dev install, 12.2 (the Jetson pin) and cuda-bindings 13.3 (the H200's) installed into
folders of their own.
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
# The releases that judge the fake, beside the dev install's cuda-python 12.9: NVIDIA's TensorRT 10.3 samples' pin on
# Python 3.10 (JetPack 6; only ``cuda.cudart``, raises without a driver) and the H200's cuda-bindings.
RELEASES = {"12.2": ("cuda-python==12.2.1",), "12.9": None, "13.3": ("cuda-bindings==13.3.1", "cuda-pathfinder==1.9.1")}


@pytest.fixture(scope="module")
def bindings(tmp_path_factory):
    """``release`` -> a folder holding that cuda-python release (None: the venv's own), installed on first use."""
    folders = {}

    def folder(release: str) -> Path | None:
        if RELEASES[release] is None:
            return None
        if release not in folders:
            target = tmp_path_factory.mktemp(f"cuda-python-{release}")
            pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                                  *RELEASES[release]], capture_output=True, text=True)
            if pip.returncode != 0 and "Could not find a version" in pip.stderr:
                pytest.skip(f"the package index is unreachable: {pip.stderr.strip().splitlines()[-1]}")
            assert pip.returncode == 0, pip.stderr
            folders[release] = target
        return folders[release]
    return folder


def run_real(code: str, bindings: Path | None) -> str:
    """``code`` in a fresh interpreter that imports the real bindings (the venv's, or those in ``bindings``)."""
    path = [str(ROOT / "tests"), str(ROOT)] + ([str(bindings)] if bindings else [])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def fake_for(release: str) -> FakeCudart:
    major, legacy = int(release.split(".")[0]), release == "12.2"
    return FakeCudart("cuda.cudart" if legacy else "cuda.bindings.runtime", None, major, legacy)


@pytest.mark.parametrize("release", RELEASES)
def test_the_fake_runtime_module_behaves_as_the_real_one(bindings, release):
    real = json.loads(run_real("import runpy; runpy.run_path('tests/cuda_contract.py', run_name='__main__')",
                               bindings(release)))
    fake = json.loads(json.dumps(observe(fake_for(release))))
    for part in real:
        assert fake[part] == real[part], f"fake_cuda differs from cuda-python {release} in {part}"


@pytest.mark.parametrize("release", RELEASES)
def test_the_adapter_hands_tensorrt_the_stream_handle(bindings, release):
    """``execute_async_v3`` and every runtime call take the stream's handle: ``int(stream)``, never ``getPtr()``
    (the address of the Python object's field; as a stream it crashed the process on an H200)."""
    code = ("from runtime.device import import_cudart\nfrom runtime.cuda import CudaPython\n"
            "adapter = object.__new__(CudaPython)\nadapter.stream = import_cudart().cudaStream_t(0x1234)\n"
            "print(adapter.stream_handle)")
    assert int(run_real(code, bindings(release))) == 0x1234


@pytest.mark.parametrize("release", RELEASES)
def test_without_a_driver_the_adapter_says_so_and_finds_no_device(bindings, release):
    code = ("from runtime.cuda import open_cuda\nfrom runtime.device import cuda_device\n"
            "from runtime.errors import OffsegError\nassert cuda_device() is None\n"
            "try:\n    open_cuda('cuda-python')\nexcept OffsegError as error:\n    print(error)")
    message = run_real(code, bindings(release)).strip()
    assert message.startswith("no usable CUDA binding: cuda-python: no NVIDIA driver is installed ("), message


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
