"""The engine builder and the TensorRT backend, end to end against strict fakes of TensorRT 10.3 (JetPack 6) and
11.1 and of the CUDA bindings (cuda-python 12 and 13 layouts, pycuda): every attribute used must exist in that
release's Python bindings, and each rule the GPU path depends on is exercised without a GPU."""
import json
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

import fake_tensorrt
from calibration.cli import calibrate_main
from chain.cli import info_main
from export.cli import main as export_main
from fake_cuda import FakeGpu, install_cuda_python, install_pycuda
from runtime.backends import open_backend
from runtime.cli import main as run_main
from runtime.errors import OffsegError
from tiny_onnx import NUM_CLASSES, write_tiny_onnx

ORIN = dict(name="Orin", major=8, minor=7, driver_version=12060)
RTX = dict(name="RTX 4090", major=8, minor=9, driver_version=12080)
RTX_CUDA13 = dict(name="RTX 5090", major=12, minor=0, driver_version=13000)


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_onnx(tmp_path / "tiny.onnx")


@pytest.fixture
def tiny_static(tmp_path):
    return write_tiny_onnx(tmp_path / "static.onnx", dynamic=False, size=(128, 128))


def machine(monkeypatch, trt_version: str, device: dict, cuda_major: int = 12, dla_cores: int = 0):
    gpu = FakeGpu(**device)
    cudart = install_cuda_python(monkeypatch, gpu, cuda_major)
    return gpu, fake_tensorrt.install(monkeypatch, trt_version, gpu, dla_cores), cudart


def build(onnx, *flags) -> dict:
    """Build an engine next to ``onnx``; returns the sidecar of the engine just built."""
    assert export_main(["--onnx", str(onnx), "--format", "engine", *flags]) == 0
    precision = "fp16" if "--fp16" in flags else "int8" if "--int8" in flags else "fp32"
    return json.loads(onnx.with_name(f"{onnx.stem}.{precision}.plan.json").read_text())


def run_in_thread(backend, batch):
    """Inference in another thread than the one that opened the engine, as the pipeline does."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(backend.infer, batch).result()


def check_output(backend, batch):
    out = run_in_thread(backend, batch)
    n, _, h, w = batch.shape
    assert out.shape == (n, NUM_CLASSES, h // 4, w // 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, fake_tensorrt.reference_output(batch, out.shape), rtol=1e-6)


# ---- the fakes are as strict as the bindings ------------------------------------------------------------------

def test_fakes_expose_exactly_each_release_surface(monkeypatch):
    trt10 = fake_tensorrt.make_tensorrt("10.3.0", FakeGpu())
    trt11 = fake_tensorrt.make_tensorrt("11.1.0", FakeGpu())
    surface10, surface11 = fake_tensorrt.load_surface("10.3.0"), fake_tensorrt.load_surface("11.1.0")
    for trt, surface in ((trt10, surface10), (trt11, surface11)):
        for name, members in surface["enums"].items():
            enum_type = trt.ILogger.Severity if name == "ILogger.Severity" else getattr(trt, name)
            assert {m.name for m in enum_type} == set(members), name
        with pytest.raises(AttributeError):
            trt.Builder(trt.Logger()).no_such_method
        with pytest.raises(AttributeError):
            trt.no_such_function
    only10 = set(surface10["enums"]["BuilderFlag"]) - set(surface11["enums"]["BuilderFlag"])
    assert {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} <= only10
    assert hasattr(trt10.BuilderFlag, "FP16") and not hasattr(trt11.BuilderFlag, "FP16")
    assert not hasattr(trt11.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    layer11 = trt11.ILayer(trt11, "x", [])
    with pytest.raises(AttributeError):
        layer11.precision = trt11.float32  # TensorRT 11 networks are strongly typed: no per-layer precision
    with pytest.raises(AttributeError):
        trt10.Runtime(trt10.Logger()).no_such_property = 1


# ---- end to end -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trt_version, device, cuda_major, flags, precision", [
    ("10.3.0", ORIN, 12, ["--fp16"], "fp16"),
    ("10.3.0", ORIN, 12, [], "fp32"),
    ("11.1.0", RTX, 12, [], "fp32"),
    ("11.1.0", RTX_CUDA13, 13, [], "fp32"),
])
def test_build_then_run_a_dynamic_engine(monkeypatch, tiny, trt_version, device, cuda_major, flags, precision):
    gpu, trt, _ = machine(monkeypatch, trt_version, device, cuda_major)
    sidecar = build(tiny, *flags)
    assert sidecar["tensorrt"]["version"] == trt_version and sidecar["gpu"]["name"] == device["name"]
    assert sidecar["precision"] == precision and sidecar["build"]["strongly_typed"] == trt_version.startswith("11")
    backend = open_backend(tiny.with_name(f"tiny.{precision}.plan"))
    assert backend.info.num_classes == NUM_CLASSES and backend.info.max_batch == 1
    assert backend.info.precision == precision and f"({precision}," in backend.description
    rng = np.random.default_rng(0)
    for size in ((256, 256), (512, 384), (256, 256)):
        check_output(backend, rng.random((1, 3, *size), np.float32))
    with pytest.raises(OffsegError, match="optimization profile"):
        backend.infer(np.zeros((1, 3, 2048, 2048), np.float32))
    backend.close()
    assert not trt.errors and gpu.device == {} and gpu.pinned == {} and gpu.streams == set()


def test_tensorrt11_fp16_engine_from_the_autocast_graph(monkeypatch, tiny_static):
    machine(monkeypatch, "11.1.0", RTX)
    sidecar = build(tiny_static, "--fp16")
    assert sidecar["onnx"]["precision"] == "fp16" and sidecar["build"]["flags"] == []
    backend = open_backend(tiny_static.with_name("static.fp16.plan"))
    check_output(backend, np.ones((1, 3, 128, 128), np.float32))
    backend.close()


@pytest.mark.parametrize("trt_version, flags", [("10.3.0", ["INT8", "OBEY_PRECISION_CONSTRAINTS"]), ("11.1.0", [])])
def test_an_int8_or_fp16_onnx_file_builds_an_engine_of_its_own_precision(monkeypatch, tiny_static, trt_version, flags):
    """The Q/DQ file of offseg-export --int8 or offseg-calibrate, carried to the device and built as given: an INT8
    engine (on TensorRT 10 with the INT8 flag, as the --int8 build sets it; it was built without and called fp32),
    named after the file, with no calibration images and no ONNX file derived. Likewise an FP16 file."""
    machine(monkeypatch, trt_version, ORIN if trt_version == "10.3.0" else RTX)
    assert export_main(["--onnx", str(tiny_static), "--int8", "--calib-data", "synthetic", "--calib-images", "2"]) == 0
    assert export_main(["--onnx", str(tiny_static), "--fp16"]) == 0
    folder = tiny_static.parent
    int8, fp16 = folder / "static.int8.onnx", folder / "static.fp16.onnx"
    before = {path.name for path in folder.iterdir()}
    assert export_main(["--onnx", str(int8), "--format", "engine"]) == 0
    sidecar = json.loads((folder / "static.int8.plan.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["build"]["flags"] == flags
    assert sidecar["onnx"]["precision"] == "int8"
    assert export_main(["--onnx", str(fp16), "--format", "engine"]) == 0
    sidecar = json.loads((folder / "static.fp16.plan.json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["onnx"]["precision"] == "fp16"
    assert sidecar["build"]["flags"] == (["FP16", "OBEY_PRECISION_CONSTRAINTS"] if trt_version == "10.3.0" else [])
    made = {path.name for path in folder.iterdir()} - before
    assert made == {"static.int8.plan", "static.int8.plan.json", "static.fp16.plan", "static.fp16.plan.json"}


def test_options_that_do_not_fit_the_precision_of_the_onnx_file_are_one_sentence(monkeypatch, tiny_static, capsys):
    machine(monkeypatch, "10.3.0", ORIN)
    assert export_main(["--onnx", str(tiny_static), "--int8", "--calib-data", "synthetic", "--calib-images", "2"]) == 0
    assert export_main(["--onnx", str(tiny_static), "--fp16"]) == 0
    int8, fp16 = tiny_static.with_name("static.int8.onnx"), tiny_static.with_name("static.fp16.onnx")
    capsys.readouterr()
    assert export_main(["--onnx", str(int8), "--format", "engine", "--int8", "--calib-data", "synthetic"]) == 2
    assert capsys.readouterr().err == f"error: --onnx {int8} is already INT8 (calibrated Q/DQ), so its engine is " \
                                      "built without calibration images: drop --calib-data\n"
    assert export_main(["--onnx", str(fp16), "--format", "engine", "--int8", "--calib-data", "synthetic"]) == 2
    assert capsys.readouterr().err == f"error: --onnx {fp16} is the FP16 model, and --int8 calibrates the FP32 " \
                                      "export: give the file it was made from\n"
    onnxruntime = tiny_static.with_name("ort.onnx")
    assert calibrate_main(["--onnx", str(tiny_static), "--calib-data", "synthetic", "--calib-images", "2", "--target",
                           "onnxruntime", "--output", str(onnxruntime)]) == 0
    capsys.readouterr()
    assert export_main(["--onnx", str(onnxruntime), "--format", "engine"]) == 2
    assert capsys.readouterr().err == f"error: --onnx {onnxruntime} is quantized for ONNX Runtime (int32 biases " \
                                      "through DequantizeLinear, which TensorRT's ONNX parser rejects): quantize the " \
                                      "FP32 export for TensorRT (offseg-calibrate --target tensorrt, or " \
                                      "offseg-export --int8)\n"
    assert info_main([str(int8)]) == 0 and info_main([str(onnxruntime)]) == 0
    described = capsys.readouterr().out
    assert f"on the device: offseg-export --onnx {int8} --format engine (an INT8 engine, as the file is)" in described
    assert f"--onnx {onnxruntime} --format engine" not in described
    assert export_main(["--onnx", str(int8), "--format", "engine", "--int8"]) == 0  # the same precision: accepted
    assert json.loads(int8.with_name("static.int8.plan.json").read_text())["precision"] == "int8"


def test_pinned_and_device_buffers_are_freed_on_reshape_and_close(monkeypatch, tiny):
    gpu, _, _ = machine(monkeypatch, "10.3.0", ORIN)
    build(tiny)
    backend = open_backend(tiny.with_name("tiny.fp32.plan"))
    for size in ((256, 256), (320, 320), (384, 256), (256, 256)):
        backend.infer(np.zeros((1, 3, *size), np.float32))
        assert len(gpu.pinned) == 2 and len(gpu.device) == 2  # one input and one output buffer at a time
    backend.close()
    assert gpu.pinned == {} and gpu.device == {}


# ---- each defect of the review --------------------------------------------------------------------------------

def test_fp32_pins_skip_integer_shape_arithmetic(monkeypatch, tiny):
    _, trt, _ = machine(monkeypatch, "10.3.0", ORIN)
    sidecar = build(tiny, "--fp16")
    assert "OBEY_PRECISION_CONSTRAINTS" in sidecar["build"]["flags"]
    assert sidecar["pinned_layers"] == ["OffsetLearning/node_softmax_1", "FreqFusion0/node_div_float"]


def real_parse(onnx_path) -> tuple:
    """tensorrt_rtx's parse of ``onnx_path`` (the real NVIDIA parser): the module, the network, its layers by name,
    and the layers the default pins select before any rule leaves some alone."""
    trt = pytest.importorskip("tensorrt_rtx")
    from calibration.files import load_onnx
    from calibration.precision import pinned_nodes
    from export.tensorrt import layers_to_pin
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx_path))
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    nodes = pinned_nodes(load_onnx(onnx_path))
    return trt, network, layers, nodes, layers_to_pin(list(layers), nodes)


def test_fp32_pins_skip_integer_layers_of_the_real_parser(tiny):
    """tensorrt_rtx's ONNX parser (the real one) types the FreqFusion shape arithmetic INT64: not pinned."""
    from export.tensorrt import is_floating_point_layer
    trt, _, layers, _, candidates = real_parse(tiny)
    integer = [layers[name] for name in candidates if not is_floating_point_layer(trt, layers[name])]
    assert integer and all(layer.name.startswith("FreqFusion0/node_") for layer in integer)
    assert any(layer.get_output(0).dtype == trt.int64 for layer in integer)


@pytest.mark.parametrize("trt_version", ["10.3.0", "11.1.0"])
def test_fp32_engines_are_true_fp32_unless_tf32_is_asked(monkeypatch, tiny, trt_version):
    machine(monkeypatch, trt_version, RTX)
    plan = tiny.with_name("tiny.fp32.plan")
    assert build(tiny)["build"]["tf32"] is False
    assert "TF32" not in json.loads(plan.read_bytes()[len(fake_tensorrt.PLAN_MAGIC):])["flags"]
    assert build(tiny, "--tf32")["build"]["tf32"] is True
    assert "TF32" in json.loads(plan.read_bytes()[len(fake_tensorrt.PLAN_MAGIC):])["flags"]


def test_timing_cache_from_another_gpu_is_replaced_not_fatal(monkeypatch, tiny):
    machine(monkeypatch, "10.3.0", ORIN)
    cache = tiny.with_name("trt.cache")
    cache.write_bytes(b"RTX 4090")  # made on another GPU: set_timing_cache refuses it
    build(tiny, "--timing-cache", str(cache))
    assert tiny.with_name("tiny.fp32.plan").is_file() and tiny.with_name("tiny.fp32.plan.json").is_file()
    assert cache.read_bytes() == b"Orin"


def test_version_compatible_engine_runs_only_with_allow_engine_host_code(monkeypatch, tiny, tmp_path, capsys):
    _, trt, _ = machine(monkeypatch, "10.3.0", ORIN)
    assert build(tiny, "--version-compatible")["tensorrt"]["version_compatible"]
    plan = tiny.with_name("tiny.fp32.plan")
    with pytest.raises(OffsegError, match=r"version-compatible engine: .*code that would run in this process\. "
                                          r"Pass --allow-engine-host-code only for an engine you built or trust"):
        open_backend(plan)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    assert run_main(["--engine", str(plan), "--image", str(image)]) == 2
    assert "--allow-engine-host-code" in capsys.readouterr().err
    backend = open_backend(plan, allow_engine_host_code=True)
    check_output(backend, np.ones((1, 3, 256, 256), np.float32))
    backend.close()
    assert not trt.errors


def test_a_sidecar_cannot_enable_engine_host_code(monkeypatch, tiny):
    """A sidecar that hides the version compatibility gets no host code run: TensorRT refuses the engine."""
    _, trt, _ = machine(monkeypatch, "10.3.0", ORIN)
    build(tiny, "--version-compatible")
    sidecar = tiny.with_name("tiny.fp32.plan.json")
    info = json.loads(sidecar.read_text())
    info["tensorrt"]["version_compatible"] = False
    sidecar.write_text(json.dumps(info))
    with pytest.raises(OffsegError, match="could not deserialize .* also needs --allow-engine-host-code"):
        open_backend(tiny.with_name("tiny.fp32.plan"))
    assert any("engine host code is allowed" in error for error in trt.errors)


def test_an_engine_tensor_above_the_limit_is_refused_before_allocation(monkeypatch, tiny):
    import runtime.limits
    gpu, _, _ = machine(monkeypatch, "10.3.0", ORIN)
    build(tiny)
    backend = open_backend(tiny.with_name("tiny.fp32.plan"))
    monkeypatch.setattr(runtime.limits, "MAX_TENSOR_BYTES", 3 * 256 * 256 * 4 - 1)
    with pytest.raises(OffsegError, match=r"the engine's images for input \(1, 3, 256, 256\) would be a tensor of "
                                          r"\[1, 3, 256, 256\] \(0.0 GiB\), above the"):
        backend.infer(np.ones((1, 3, 256, 256), np.float32))
    assert not gpu.device and not gpu.pinned and backend.buffers is None
    backend.close()


def test_dla_engine_records_the_gpu_and_runs_on_its_dla_core(monkeypatch, tiny_static):
    machine(monkeypatch, "10.3.0", ORIN, dla_cores=2)
    sidecar = build(tiny_static, "--fp16", "--dla-core", "1")
    assert sidecar["dla_core"] == 1 and sidecar["gpu"]["index"] == 0 and sidecar["gpu"]["name"] == "Orin"
    backend = open_backend(tiny_static.with_name("static.fp16.plan"))
    assert backend.engine._dla_core == 1
    backend.close()


def test_engine_of_another_tensorrt_patch_release_is_refused_with_a_sentence(monkeypatch, tiny):
    machine(monkeypatch, "10.3.0", ORIN)
    build(tiny)
    sidecar = tiny.with_name("tiny.fp32.plan.json")
    info = json.loads(sidecar.read_text())
    info["tensorrt"]["version"] = "10.3.1"
    sidecar.write_text(json.dumps(info))
    with pytest.raises(OffsegError, match=r"built with TensorRT 10\.3\.1, this is TensorRT 10\.3\.0"):
        open_backend(tiny.with_name("tiny.fp32.plan"))


def test_cuda_python_13_layout_runs_without_warnings(monkeypatch, tiny):
    _, _, cudart = machine(monkeypatch, "11.1.0", RTX_CUDA13, cuda_major=13)
    build(tiny)
    backend = open_backend(tiny.with_name("tiny.fp32.plan"), cuda="cuda-python")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        check_output(backend, np.ones((1, 3, 256, 256), np.float32))
    assert cudart.__name__ == "cuda.bindings.runtime"
    backend.close()


def test_cuda_python_13_on_a_cuda12_driver_says_which_version_to_install(monkeypatch, tiny):
    machine(monkeypatch, "10.3.0", ORIN, cuda_major=12)
    build(tiny)
    install_cuda_python(monkeypatch, FakeGpu(**ORIN), 13)
    with pytest.raises(OffsegError, match=r"cuda-python>=12\.6,<13"):
        open_backend(tiny.with_name("tiny.fp32.plan"), cuda="cuda-python")


@pytest.mark.parametrize("cuda_python", ["missing", "cuda-python 13 on a CUDA 12 driver"])
def test_pycuda_when_cuda_python_is_missing_or_broken(monkeypatch, tiny, cuda_python):
    gpu, _, _ = machine(monkeypatch, "10.3.0", ORIN)
    build(tiny)
    if cuda_python == "missing":
        for name in ("cuda", "cuda.cudart", "cuda.bindings", "cuda.bindings.runtime"):
            monkeypatch.setitem(sys.modules, name, None)
    else:
        install_cuda_python(monkeypatch, gpu, 13)
    install_pycuda(monkeypatch, gpu)
    backend = open_backend(tiny.with_name("tiny.fp32.plan"))  # auto: cuda-python missing, pycuda found
    assert "pycuda" in backend.description and "Orin" in backend.description
    check_output(backend, np.ones((1, 3, 256, 256), np.float32))  # in another thread than the context's
    backend.close()
    assert gpu.pinned == {} and gpu.device == {}


def test_cuda_python_before_12_6_has_only_cuda_cudart(monkeypatch, tiny):
    gpu = FakeGpu(**ORIN)
    fake_tensorrt.install(monkeypatch, "10.3.0", gpu)
    cudart = install_cuda_python(monkeypatch, gpu, 12, legacy=True)
    assert build(tiny)["gpu"]["name"] == "Orin"
    backend = open_backend(tiny.with_name("tiny.fp32.plan"), cuda="cuda-python")
    check_output(backend, np.ones((1, 3, 256, 256), np.float32))
    backend.close()
    assert cudart.__name__ == "cuda.cudart"


def test_real_tensorrt_rtx_builds_with_tf32_off_and_a_timing_cache(tiny):
    pytest.importorskip("tensorrt_rtx")
    cache = tiny.with_name("trt.cache")
    for _ in range(2):  # the second build reads the cache the first wrote (no-ops in TensorRT-RTX, but valid calls)
        assert export_main(["--onnx", str(tiny), "--format", "engine", "--trt-module", "tensorrt_rtx",
                            "--timing-cache", str(cache)]) == 0
        assert cache.stat().st_size > 0
    sidecar = json.loads(tiny.with_name("tiny.fp32.plan.json").read_text())
    assert sidecar["build"]["tf32"] is False and sidecar["tensorrt"]["module"] == "tensorrt_rtx"


def test_tensorrt_rtx_is_never_the_silent_default(tiny, monkeypatch, capsys):
    """With only TensorRT-RTX installed, a plain --format engine stops instead of making a plan offseg-run refuses."""
    pytest.importorskip("tensorrt_rtx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert export_main(["--onnx", str(tiny), "--format", "engine", "--fp16"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed here (TensorRT-RTX is" in err and "--trt-module tensorrt_rtx" in err
    assert not list(tiny.parent.glob("*.plan"))


@pytest.mark.slow
@pytest.mark.xdist_group("dynamic")  # shares the dynamic export with test_export_dynamic.py
def test_dynamic_offseg_export_pins_no_integer_or_shape_tensor_layer(dynamic_onnx, monkeypatch):
    """The real parser (tensorrt_rtx) types part of the pinned scopes INT64 and feeds other layers shape tensors
    (INT64 -> FLOAT Casts, the Fills of aranges), which trtexec does not pin either; the TensorRT 10.3 build pins the
    rest, the same layers as the real parse."""
    from export.tensorrt import is_floating_point_layer, pinnable_layers, takes_a_shape_tensor
    trt, network, layers, nodes, candidates = real_parse(dynamic_onnx)
    integer = {name for name in candidates if not is_floating_point_layer(trt, layers[name])}
    shape_fed = {name for name in candidates if takes_a_shape_tensor(layers[name])}
    assert integer and shape_fed, "the dynamic export has integer and shape-tensor layers under the pinned scopes"
    pinned = set(pinnable_layers(trt, network, nodes))
    assert pinned and not pinned & (integer | shape_fed)
    machine(monkeypatch, "10.3.0", RTX)
    sidecar = build(dynamic_onnx, "--fp16")  # fails with "no implementation" if an integer layer is forced to FP32
    assert set(sidecar["pinned_layers"]) == pinned


def test_offseg_info_says_what_an_engine_is_and_whether_it_runs_here(monkeypatch, tiny, capsys):
    from chain.cli import info_main
    machine(monkeypatch, "10.3.0", ORIN)
    build(tiny, "--fp16", "--max-batch", "4")
    capsys.readouterr()
    engine = tiny.with_name("tiny.fp16.plan")
    assert info_main([str(engine)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{engine}: TensorRT engine of offseg-t, {NUM_CLASSES} classes, fp16; built by TensorRT "
                          "10.3.0 for Orin (compute capability 8.7)"), out
    assert "batch 1-4 (profile), 256x256 to 1024x2048 (profile, tuned for 512x512)" in out, out
    assert "runs here (TensorRT and GPU match)" in out
    machine(monkeypatch, "10.3.0", RTX)  # the same TensorRT on another GPU
    assert info_main([str(engine)]) == 0
    assert ("cannot run here: it was built for Orin (compute capability 8.7), this GPU is RTX 4090"
            in capsys.readouterr().out)
    sidecar = engine.with_name(engine.name + ".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "build": {"profile_shapes": [5, "x"]}}))
    assert info_main([str(engine)]) == 0  # a damaged profile in the sidecar is not described, not a traceback
    assert "batch 1, any height and width, float32" in capsys.readouterr().out
