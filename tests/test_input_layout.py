"""``offseg-export --input-layout nhwc``: a graph that takes (N, H, W, 3) frames as cameras and decoders give them,
its layout recorded as ``offseg.input_layout`` and honoured by everything that feeds the graph (offseg-run, TensorRT
profiles, INT8 calibration, offseg-validate, the nvinfer config and its emulation), checked against the graph."""
import json

import cv2
import numpy as np
import onnx
import pytest
import torch

from calibration.cli import validate_main
from calibration.nvinfer import NvinferConfig, preprocess
from calibration.quantize import QuantOptions, quantize_file
from calibration.validate import engine_infer
from export.cli import main as export_main
from export.deepstream import CONFIG, key_file, nvinfer_properties
from export.tensorrt import EngineOptions, profile_shapes
from offseg import build_model, save_checkpoint
from offseg.data.synthetic import render_scene
from offseg.protocol import TestProtocol
from runtime.backends import ModelInfo, open_backend
from runtime.cli import main as run_main
from runtime.errors import OffsegError
from runtime.preprocess import INPUT_FORMATS, to_model_input
from tiny_onnx import write_tiny_onnx

# one worker builds the exports (xdist ran the module-scoped fixture in both)
pytestmark = pytest.mark.xdist_group("input-layout")
SIZE = (64, 96)
UINT8_INT32 = ["--input-format", "uint8-rgb", "--output-kind", "labels", "--label-dtype", "int32"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{layout: ONNX} of one seeded 9-class OffSeg-T: uint8 RGB in, INT32 labels out; nhwc also NHWC labels out."""
    folder = tmp_path_factory.mktemp("layouts")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model("offseg-t", 9).eval(), folder / "t.pth", "offseg-t")
    paths = {}
    for layout, extra in (("nchw", []), ("nhwc", ["--input-layout", "nhwc", "--layout", "nhwc"])):
        paths[layout] = folder / f"{layout}.onnx"
        assert export_main(["--checkpoint", str(checkpoint), "--input-size", *map(str, SIZE), "--no-check",
                            "--output", str(paths[layout]), *UINT8_INT32, *extra]) == 0
    return {**paths, "checkpoint": checkpoint}


def _images(folder):
    folder.mkdir()
    for seed, (h, w) in enumerate([(120, 160), (90, 200), (64, 96)]):
        cv2.imwrite(str(folder / f"scene{seed}.png"), render_scene(seed, h, w)[0])
    return folder


@pytest.mark.slow
def test_an_nhwc_uint8_export_gives_offseg_run_the_labels_of_the_nchw_export(exports, tmp_path):
    graph = onnx.load(str(exports["nhwc"])).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, *SIZE, 3] and graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    first = [node.op_type for node in graph.node[:2]]
    assert first == ["Cast", "Transpose"]  # TensorRT transposes no UINT8 tensor: the Cast to float comes first
    assert list(graph.node[1].attribute[0].ints) == [0, 3, 1, 2]
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    meta = {p.key: p.value for p in onnx.load(str(exports["nhwc"])).metadata_props}
    assert (meta["offseg.input_layout"], meta["offseg.input_format"]) == ("nhwc", "uint8 RGB NHWC")
    images = _images(tmp_path / "images")
    masks = {}
    for layout in ("nchw", "nhwc"):
        path = exports[layout]
        out = tmp_path / f"masks-{layout}"
        assert run_main(["--engine", str(path), "--images", str(images), "--save-masks", str(out),
                         "--no-progress"]) == 0
        masks[layout] = {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(out.iterdir())}
    assert len(masks["nhwc"]) == 3 and masks["nhwc"].keys() == masks["nchw"].keys()
    for name, mask in masks["nchw"].items():
        assert np.array_equal(masks["nhwc"][name], mask), name
    assert len(np.unique(np.concatenate([m.ravel() for m in masks["nchw"].values()]))) > 1  # not a constant


@pytest.mark.slow
def test_tensorrt_rtx_parses_and_builds_the_nhwc_uint8_export(exports):
    pytest.importorskip("tensorrt_rtx")
    assert export_main(["--onnx", str(exports["nhwc"]), "--format", "engine", "--trt-module", "tensorrt_rtx"]) == 0
    engine = exports["nhwc"].with_name("nhwc.fp32.plan")
    sidecar = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert engine.stat().st_size > 100_000
    assert (sidecar["onnx"]["input_layout"], sidecar["onnx"]["input_format"]) == ("nhwc", "uint8 RGB NHWC")


def test_tensorrt_rtx_builds_a_dynamic_nhwc_graph_with_an_nhwc_profile(tmp_path):
    """The optimization profile puts H and W at axes 1 and 2 (NCHW positions would ask for 3 channels of 256)."""
    pytest.importorskip("tensorrt_rtx")
    path = write_tiny_onnx(tmp_path / "tiny.onnx", dynamic=True, input_layout="nhwc")
    assert export_main(["--onnx", str(path), "--format", "engine", "--trt-module", "tensorrt_rtx",
                        "--min-size", "64", "64", "--opt-size", "128", "128", "--max-size", "256", "256"]) == 0
    assert tmp_path.joinpath("tiny.fp32.plan").stat().st_size > 1000


@pytest.mark.slow
def test_an_nhwc_deepstream_package_passes_offseg_validate_through_the_emulated_nvinfer(exports, tmp_path):
    package, report = tmp_path / "package", tmp_path / "report"
    assert export_main(["--checkpoint", str(exports["checkpoint"]), "--input-size", *map(str, SIZE), "--format",
                        "deepstream", "--input-layout", "nhwc", "--output", str(package), "--no-check"]) == 0
    assert "network-input-order=1\n" in (package / CONFIG).read_text()
    assert validate_main(["--deepstream", str(package), "--checkpoint", str(exports["checkpoint"]),
                          "--eval-images", "2", "--report", str(report)]) == 0
    summary = json.loads((report / "report.json").read_text())["summary"]
    assert abs(summary["miou_delta"]) <= 0.1 and summary["pixel_agreement"] > 99


def test_profile_shapes_follow_the_input_layout():
    options = EngineOptions(max_batch=4, shapes=((256, 256), (512, 512), (1024, 2048)))
    assert profile_shapes(["batch", "h", "w", 3], options, "nhwc") == {
        "min": (1, 256, 256, 3), "opt": (1, 512, 512, 3), "max": (4, 1024, 2048, 3)}
    assert profile_shapes([1, 512, 512, 3], options, "nhwc") == {}


@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_nhwc_batches_are_the_nchw_batches_transposed(input_format):
    frames = [render_scene(seed, 64, 96)[0] for seed in (1, 2)]
    planar = to_model_input(frames, input_format)
    interleaved = to_model_input(frames, input_format, "nhwc")
    assert interleaved.shape == (2, *SIZE, 3) and interleaved.flags.c_contiguous
    assert interleaved.dtype == planar.dtype and np.array_equal(interleaved, planar.transpose(0, 2, 3, 1))


def _forge(path, **props):
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({f"offseg.{key}": value for key, value in props.items()})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("graph_layout, props, message", [
    ("nchw", {"input_layout": "nhwc", "input_format": "float32 normalized RGB NHWC"},
     "says its input is nhwc (N, H, W, 3) but its graph takes [1, 3, 64, 96]"),
    ("nhwc", {"input_layout": "nchw", "input_format": "float32 normalized RGB NCHW"},
     "says its input is nchw (N, 3, H, W) but its graph takes [1, 64, 96, 3]"),
    ("nchw", {"input_layout": "nhwc"}, "offseg.input_format 'float32 normalized RGB NCHW' contradicts "
                                       "offseg.input_layout 'nhwc'"),
    ("nhwc", {"input_layout": "hwc"}, "offseg.input_layout 'hwc' is not one of nchw, nhwc"),
])
def test_a_forged_input_layout_is_one_sentence(tmp_path, capsys, graph_layout, props, message):
    path = _forge(write_tiny_onnx(tmp_path / "tiny.onnx", dynamic=False, size=SIZE, input_layout=graph_layout),
                  **props)
    with pytest.raises(OffsegError) as raised:
        open_backend(path)
    assert message in str(raised.value)
    capsys.readouterr()
    assert export_main(["--onnx", str(path), "--int8", "--calib-data", "synthetic", "--calib-images", "1"]) == 2
    err = capsys.readouterr().err  # INT8 calibration reads the same metadata, checked the same way
    assert message in err and "Traceback" not in err


def _tiny_pair(tmp_path, dynamic=False):
    weight = np.random.default_rng(0).standard_normal((5, 3, 4, 4))
    return {layout: write_tiny_onnx(tmp_path / f"{layout}.onnx", dynamic, SIZE, weight, layout)
            for layout in ("nchw", "nhwc")}


def test_int8_calibration_feeds_an_nhwc_graph_nhwc_images(tmp_path):
    pairs = _tiny_pair(tmp_path)
    frame = to_model_input([render_scene(3, *SIZE)[0]])
    outputs = {}
    for layout, path in pairs.items():
        quantize_file(path, tmp_path / f"{layout}.int8.onnx", "synthetic", QuantOptions(samples=2))
        backend = open_backend(tmp_path / f"{layout}.int8.onnx")
        assert backend.info.input_layout == layout
        outputs[layout] = backend.infer(frame if layout == "nchw" else frame.transpose(0, 2, 3, 1).copy())
    np.testing.assert_array_equal(outputs["nhwc"], outputs["nchw"])  # the same ranges from the same images


def test_offseg_validate_feeds_an_nhwc_model_in_its_layout(tmp_path):
    protocol = TestProtocol(mode="whole")
    x = to_model_input([render_scene(4, *SIZE)[0]])
    scores = {}
    for layout, path in _tiny_pair(tmp_path).items():
        backend = open_backend(path)
        scores[layout] = engine_infer(backend.infer, backend.info, protocol)(x)
    assert scores["nhwc"].ndim == 4 and scores["nhwc"].shape[1] == 5
    np.testing.assert_array_equal(scores["nhwc"], scores["nchw"])


def test_the_nvinfer_config_of_an_nhwc_model_sets_network_input_order_1(tmp_path):
    """nvinfer feeds NHWC float with network-input-order=1 (infer-dims stay 3;H;W); its emulation follows."""
    info = ModelInfo("offseg-t", 5, SIZE, "float-rgb-0-255", "probs", input_layout="nhwc")
    props = nvinfer_properties(info, "offseg-t.onnx", fp16=False)
    assert (props["network-input-order"], props["infer-dims"]) == ("1", f"3;{SIZE[0]};{SIZE[1]}")
    (tmp_path / CONFIG).write_text(key_file(props, "# test\n"))
    config = NvinferConfig.read(tmp_path)
    frame = render_scene(5, 100, 240)[0]
    planar_config = NvinferConfig(**{**config.__dict__, "nhwc_input": False})
    interleaved, planar = preprocess(frame, config)[0], preprocess(frame, planar_config)[0]
    assert interleaved.shape == (1, *SIZE, 3)
    np.testing.assert_array_equal(interleaved, planar.transpose(0, 2, 3, 1))


def test_the_int8_sensitivity_sweep_reads_labels_in_either_layout(exports):
    """The sweep scores label maps: an INT32 labels output, NCHW (N, H, W) or NHWC (N, H, W, 1), is read as the
    labels it is (it used to be argmax-ed like logits), and the sweep ranks the groups of the NHWC export."""
    from calibration.files import load_onnx, model_info
    from calibration.sensitivity import labels_of, sweep
    from calibration.sources import calibration_inputs
    frame = render_scene(5, *SIZE)[0]
    for layout in ("nchw", "nhwc"):
        info = model_info(load_onnx(exports[layout]), exports[layout])
        x = to_model_input([frame], info.input_format, info.input_layout)
        expected = info.planar(open_backend(exports[layout]).infer(x))[0]
        (labels,) = labels_of(exports[layout], [x], info)
        assert labels.shape == SIZE
        np.testing.assert_array_equal(labels, expected)
    inputs = calibration_inputs("synthetic", 2, SIZE, "uint8-rgb", "nhwc")
    ranking = sweep(exports["nhwc"], "synthetic", inputs, QuantOptions(target="tensorrt", samples=2), depth=1,
                    progress=False)
    assert len(ranking) >= 2 and all(0 <= item.miou <= 100 for item in ranking)
    assert [item.miou for item in ranking] == sorted(item.miou for item in ranking)
