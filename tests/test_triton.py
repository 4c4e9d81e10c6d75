"""Triton: ``offseg-export --format triton`` repositories parse with Triton's own schema (tritonclient's
model_config_pb2 and protobuf's text format) and state the ONNX graph's I/O and our metadata; a real
``tritonserver`` on loopback serves one, and ``offseg-run --triton`` (HTTP and gRPC) gets the labels that
``offseg-run`` gets from the ONNX file; perf_analyzer measures it. The real packages come from PyPI
(``tests/triton_server.py``); without PyPI these tests skip."""
import contextlib
import io
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from exported import export_small_model
from export.cli import main as export_main
from runtime.backends import ModelInfo
from triton_server import (install_perf_analyzer, install_server, install_server_python, install_tritonclient,
                           serving, start_server, stop_server)

SIZE = (64, 96)
pytestmark = pytest.mark.xdist_group("triton")


@pytest.fixture(scope="module")
def tritonclient(tmp_path_factory):
    install_tritonclient(tmp_path_factory.getbasetemp() / "tritonclient")
    import tritonclient.grpc.model_config_pb2 as model_config_pb2
    return model_config_pb2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tritonserver")
    return install_server(folder), install_server_python(folder)


@pytest.mark.slow
def test_repository_config_parses_with_tritons_schema_and_matches_the_onnx_also_from_an_exported_file(
        tmp_path, tritonclient):
    model_config_pb2 = tritonclient
    from google.protobuf import text_format

    from calibration.files import derive_fp16

    checkpoint, onnx_path = export_small_model(tmp_path, input_size=SIZE)
    repository = tmp_path / "repo"
    assert export_main(["--checkpoint", str(checkpoint), "--input-size", *map(str, SIZE), "--format", "triton",
                        "--output", str(repository), "--output-kind", "labels", "--label-dtype", "int32",
                        "--layout", "nhwc", "--no-check"]) == 0
    config = text_format.Parse((repository / "offseg-t" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    graph = onnx.load(str(repository / "offseg-t" / "1" / "model.onnx")).graph
    assert config.name == "offseg-t" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")  # a fixed batch of 1
    assert config.input[0].name == graph.input[0].name and list(config.input[0].dims) == [1, 3, *SIZE]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.output[0].name == "labels" and list(config.output[0].dims) == [1, *SIZE, 1]
    assert config.output[0].data_type == model_config_pb2.TYPE_INT32
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    info = ModelInfo.from_metadata({k: v.string_value for k, v in config.parameters.items()})
    assert (info.num_classes, info.output_kind, info.output_layout) == (9, "labels", "nhwc")
    packaged = tmp_path / "from-onnx"  # --onnx: the exported file copied in, named by its metadata
    assert export_main(["--onnx", str(onnx_path), "--format", "triton", "--output", str(packaged)]) == 0
    assert (packaged / "offseg-t" / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    config = text_format.Parse((packaged / "offseg-t" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "offseg-t" and list(config.input[0].dims) == [1, 3, *SIZE]
    assert config.output[0].name == "logits" and list(config.output[0].dims) == [1, 9, SIZE[0] // 4, SIZE[1] // 4]
    derive_fp16(onnx_path, tmp_path / "t.fp16.onnx")  # a derived file: the package starts from its FP32 source
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert export_main(["--onnx", str(tmp_path / "t.fp16.onnx"), "--format", "triton", "--output",
                            str(tmp_path / "refused")]) == 2
    assert "is the FP16 model; a --format triton package starts from the FP32 ONNX file" in err.getvalue()
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("backend, runner, kind", [("onnxruntime", "onnxruntime_onnx", "KIND_GPU"),
                                                   ("tensorrt", "tensorrt_plan", "KIND_GPU"),
                                                   ("python", "", "KIND_CPU")])
def test_a_dynamic_batch_gives_max_batch_size_dynamic_batching_and_minus_one_dims(tmp_path, tritonclient, backend,
                                                                                   runner, kind):
    model_config_pb2 = tritonclient
    from google.protobuf import text_format
    from export.triton import config_text
    from tiny_onnx import NUM_CLASSES, write_tiny_onnx

    model = onnx.load(str(write_tiny_onnx(tmp_path / "tiny.onnx", dynamic=True)))
    meta = {p.key: p.value for p in model.metadata_props}
    config = text_format.Parse(config_text("offseg-t", model, meta, max_batch=8, backend=backend),
                               model_config_pb2.ModelConfig())
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [NUM_CLASSES, -1, -1]
    assert config.platform == runner and config.backend == ("python" if backend == "python" else "")
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == kind


@pytest.mark.parametrize("dynamic, dims, max_batch", [(False, [1, *SIZE, 3], 0), (True, [-1, -1, 3], 8)])
def test_an_nhwc_models_config_parses_and_the_client_reads_its_layout(tmp_path, tritonclient, dynamic, dims,
                                                                      max_batch):
    """An --input-layout nhwc graph: input dims [H, W, 3] (here with the fixed batch) or [-1, -1, 3] under
    dynamic batching, what a camera frame is; the client's ModelInfo (from the server's JSON config) says nhwc."""
    model_config_pb2 = tritonclient
    from google.protobuf import json_format, text_format
    from export.triton import config_text
    from runtime.backends.triton_backend import TritonBackend
    from tiny_onnx import write_tiny_onnx

    model = onnx.load(str(write_tiny_onnx(tmp_path / "tiny.onnx", dynamic, SIZE, input_layout="nhwc")))
    meta = {p.key: p.value for p in model.metadata_props}
    config = text_format.Parse(config_text("offseg-t", model, meta, max_batch=8), model_config_pb2.ModelConfig())
    assert list(config.input[0].dims) == dims and config.max_batch_size == max_batch
    as_served = json_format.MessageToDict(config, preserving_proto_field_name=True)
    info = TritonBackend.__new__(TritonBackend)._model_info(as_served, "Triton model offseg-t")
    assert (info.input_layout, info.input_format) == ("nhwc", "normalized")


def offseg_run(*argv) -> tuple[int, str, str]:
    from runtime.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def masks(folder):
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def python_repository(tmp_path_factory):
    """A Python-backend repository (ONNX Runtime inside; what pytriton's tritonserver can serve) and what
    offseg-export printed."""
    folder = tmp_path_factory.mktemp("python-repo")
    checkpoint, _ = export_small_model(folder, input_size=SIZE)
    repository = folder / "repo"
    code, stdout, err = offseg_export("--checkpoint", checkpoint, "--input-size", *SIZE, "--format", "triton",
                                      "--triton-backend", "python", "--output", repository, "--no-check")
    assert code == 0, err
    return repository, stdout


@pytest.mark.slow
def test_offseg_run_on_a_real_triton_server_gives_the_onnx_files_labels(tmp_path, tritonclient, server,
                                                                        python_repository):
    server, python_bin = server
    """A Python-backend repository (ONNX Runtime inside) on pytriton's tritonserver: HTTP and gRPC clients get the
    masks the local ONNX file gives, frame for frame; perf_analyzer reaches the model; the server is stopped."""
    from offseg.data.synthetic import render_scene
    repository, stdout = python_repository
    assert "offseg-t/1/model.onnx, offseg-t/1/model.py" in stdout
    assert f"wrote {repository}/offseg-t/1/model.onnx (" in stdout and ".partial" not in stdout  # where it lies
    images = tmp_path / "images"
    images.mkdir()
    for seed, (h, w) in enumerate([(90, 160), (64, 96), (120, 100)]):
        cv2.imwrite(str(images / f"s{seed}.png"), render_scene(seed, h, w)[0])
    local = tmp_path / "local"
    assert offseg_run("--engine", repository / "offseg-t" / "1" / "model.onnx", "--images", images,
                      "--save-masks", local, "--no-progress")[0] == 0
    with serving(server, repository, tmp_path / "server.log", python_bin) as (http, grpc):
        for url, name in ((f"http://127.0.0.1:{http}", []), (f"grpc://127.0.0.1:{grpc}", ["--model-name", "offseg-t"])):
            served = tmp_path / url.split(":")[0]
            code, stdout, err = offseg_run("--triton", url, *name, "--images", images, "--save-masks", served,
                                           "--no-progress")
            assert code == 0, err
            assert f"on Triton Inference Server at {url} ({url.split(':')[0].upper()}), model offseg-t" in stdout
            got, want = masks(served), masks(local)
            assert got.keys() == want.keys() and len(got) == 3
            assert all(np.array_equal(got[k], want[k]) for k in want)
        code, _, err = offseg_run("--triton", f"http://127.0.0.1:{http}", "--model-name", "nope", "--images", images)
        assert code == 2 and "has no ready model 'nope' (it serves: offseg-t)" in err
        perf_analyzer, env = install_perf_analyzer(tmp_path.parent, server)
        # zeros: perf_analyzer's random FP32 data is not an image (NaNs make the gather form's indices invalid);
        # a fixed request count: its stability search failed on a loaded CI machine, and speed is not tested here
        report = subprocess.run([str(perf_analyzer), "-m", "offseg-t", "-u", f"127.0.0.1:{http}", "-i", "http",
                                 "--request-count", "20", "--concurrency-range", "1", "--input-data", "zero"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
        assert "Throughput:" in report.stdout and "infer/sec" in report.stdout
    code, _, err = offseg_run("--triton", f"http://127.0.0.1:{http}", "--images", images)
    assert code == 2 and f"no Triton server answers at http://127.0.0.1:{http}" in err


@pytest.mark.slow
def test_a_server_that_restarts_mid_run_is_waited_for_and_no_frame_is_lost(tmp_path, tritonclient, server,
                                                                            python_repository, caplog, monkeypatch):
    """The server crashes (SIGKILL) after a few frames and comes back on its ports: HTTP and gRPC runs wait for it
    and end with every frame's mask equal to the local ONNX file's. A server that does not come back ends the run
    after RECOVER_SECONDS, with the masks done so far and the error in the summary. Both used to end the run at the
    first failed request."""
    import json
    import threading

    from offseg.data.synthetic import render_scene
    from runtime.backends import triton_backend
    server, python_bin = server
    repository, _ = python_repository
    images = tmp_path / "images"
    images.mkdir()
    for index in range(120):
        cv2.imwrite(str(images / f"{index:03d}.png"), render_scene(index, *SIZE)[0])
    assert offseg_run("--engine", repository / "offseg-t" / "1" / "model.onnx", "--images", images, "--save-masks",
                      tmp_path / "local", "--no-progress")[0] == 0
    want = masks(tmp_path / "local")
    processes = []

    def crash_when_masks_appear(out: Path, ports, restart: bool, run_ended: threading.Event) -> None:
        while not (out.is_dir() and len(list(out.iterdir())) >= 5):
            if run_ended.is_set():  # it ended before its fifth mask: no crash, the assertions after it say why
                return
            time.sleep(0.01)
        stop_server(processes[-1], signal.SIGKILL)
        if restart:
            processes.append(start_server(server, repository, tmp_path / "b.log", python_bin, ports)[0])

    try:
        for protocol, restart in (("http", True), ("grpc", True), ("http", False)):
            if not restart:
                monkeypatch.setattr(triton_backend, "RECOVER_SECONDS", 3.0)
            process, http, grpc = start_server(server, repository, tmp_path / "a.log", python_bin)
            processes.append(process)
            out = tmp_path / f"{protocol}-{restart}"
            run_ended = threading.Event()
            crasher = threading.Thread(target=crash_when_masks_appear, args=(out, (http, grpc), restart, run_ended))
            crasher.start()
            url = f"{protocol}://127.0.0.1:{http if protocol == 'http' else grpc}"
            caplog.clear()
            code, _, err = offseg_run("--triton", url, "--images", images, "--save-masks", out, "--summary",
                                      out.with_suffix(".json"), "--no-progress")
            run_ended.set()
            crasher.join()
            assert f"the Triton server at {url} stopped answering (" in caplog.text
            got = masks(out)
            if restart:
                assert code == 0, err
                assert f"the Triton server at {url} is ready again after" in caplog.text
                assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
            else:
                assert code == 2 and "and was not ready again within 3 s" in err.strip().splitlines()[-1]
                assert 5 <= len(got) < len(want) and all(np.array_equal(got[k], want[k]) for k in got)
                assert "was not ready again" in json.loads(out.with_suffix(".json").read_text())["error"]
            stop_server(processes[-1])
    finally:
        for process in processes:
            stop_server(process)


def test_a_request_a_ready_server_refuses_ends_the_run_without_waiting(monkeypatch):
    from runtime.backends.triton_backend import TritonBackend
    from runtime.errors import OffsegError
    backend = object.__new__(TritonBackend)
    backend.model_name, backend.url = "offseg-t", "http://h:8000"
    asked = []

    def refused(batch):
        raise ValueError("unexpected shape for input 'images'\nmore")
    monkeypatch.setattr(backend, "_request", refused)
    monkeypatch.setattr(backend, "_ready", lambda fresh_client=False: asked.append(fresh_client) or True)
    with pytest.raises(OffsegError, match="^Triton inference of offseg-t failed: unexpected shape for input 'images'$"):
        backend.infer(np.zeros((1, 3, 8, 8), np.float32))
    assert asked == [True]  # asked once, through a new connection


def offseg_export(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = export_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, message", [
    (["--images", "."], "give the model as --engine FILE (.onnx, .plan, .pth) or a server as --triton URL"),
    (["--engine", "m.onnx", "--triton", "http://h:8000", "--images", "."], "one of the two"),
    (["--engine", "m.onnx", "--model-name", "x", "--images", "."], "--model-name chooses a model of a --triton"),
    (["--triton", "ftp://h:1", "--images", "."], "the scheme must be http:// or grpc://"),
    (["--triton", "http://h", "--images", "."], "give the server as http://HOST:PORT"),
    (["--triton", "http://h:8000", "--device", "cpu", "--images", "."], "a --triton server chooses how it runs"),
])
def test_triton_mistakes_are_one_sentence(argv, message):
    code, _, err = offseg_run(*argv)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_a_tensorrt_repository_holds_the_plan_and_its_sidecar_and_names_tensorrt_plan(tmp_path, tritonclient,
                                                                                       monkeypatch):
    """Built as --format engine builds (here with the fake TensorRT 10.3 on a fake RTX GPU): FP16 with our pins,
    the ONNX intermediates removed, the config's I/O from the graph."""
    import json
    from google.protobuf import text_format
    from test_trt_contract import RTX, machine

    machine(monkeypatch, "10.3.0", RTX)
    checkpoint, _ = export_small_model(tmp_path, input_size=SIZE)
    repository = tmp_path / "repo"
    code, stdout, err = offseg_export("--checkpoint", checkpoint, "--input-size", *SIZE, "--format", "triton",
                                      "--triton-backend", "tensorrt", "--fp16", "--output", repository, "--no-check")
    assert code == 0, err
    version = repository / "offseg-t" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.plan", "model.plan.json"]
    sidecar = json.loads((version / "model.plan.json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["pinned_layers"]
    assert sidecar["onnx"]["freqfusion_form"] == "taps"  # the form TensorRT fuses, as --format engine
    config = text_format.Parse((repository / "offseg-t" / "config.pbtxt").read_text(), tritonclient.ModelConfig())
    assert config.platform == "tensorrt_plan" and list(config.input[0].dims) == [1, 3, *SIZE]
    assert "tensorrt_plan" in stdout and "offseg-t/1/model.plan" in stdout and ".partial" not in stdout
    assert f"wrote {repository}/offseg-t/1/model.plan (" in stdout and "were removed" in stdout


def test_triton_backend_without_format_triton_is_one_sentence(capsys):
    assert export_main(["--triton-backend", "python"]) == 2
    assert "--triton-backend python chooses what serves a --format triton repository" in capsys.readouterr().err
