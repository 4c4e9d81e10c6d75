"""INT8 quantization survives graph shapes that trip ONNX Runtime's quantizer."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.quantize import QuantOptions, quantize_file, quantize_unless_current, unshare_conv_biases
from calibration.sources import calibration_inputs


def shared_bias_model():
    """Two Convs sharing the bias ``b1`` (as constant folding leaves equal biases), the first one's output named
    ``b11``: the name ORT's quantizer gives its own copy of a shared ``b1``."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((3, 3, 1, 1)).astype(np.float32), f"w{i}") for i in (1, 2)]
    bias = numpy_helper.from_array(np.array([0.1, -0.2, 0.3], np.float32), "b1")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1", "b1"], ["b11"], name="conv1"),
         helper.make_node("Relu", ["b11"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2", "b1"], ["logits"], name="conv2")],
        "toy", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 32])], [*weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in {"offseg.model": "toy", "offseg.num_classes": "3", "offseg.input_size": "32 32"}.items():
        model.metadata_props.add(key=key, value=value)
    return model


def test_shared_biases_are_copied_under_names_no_one_uses():
    model = shared_bias_model()
    assert unshare_conv_biases(model) == 1
    biases = [node.input[2] for node in model.graph.node if node.op_type == "Conv"]
    assert biases == ["b1", "b1_copy1"]
    onnx.checker.check_model(model, full_check=True)


def test_onnxruntime_int8_of_a_graph_with_a_shared_bias_is_valid(tmp_path):
    source, target = tmp_path / "toy.onnx", tmp_path / "toy.int8.onnx"
    onnx.save(shared_bias_model(), source)
    quantize_file(source, target, "synthetic", QuantOptions(target="onnxruntime", samples=2))
    quantized = onnx.load(str(target))
    onnx.checker.check_model(quantized, full_check=True)  # single static assignment holds
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) >= 2
    x = calibration_inputs("synthetic", 1, (32, 32))[0]  # within the calibrated ranges
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]  # noqa: E731
    fp32, int8 = run(source), run(target)
    assert np.abs(int8 - fp32).mean() < 0.2 * np.abs(fp32).mean()  # a working INT8 graph, not a broken one


def test_calibration_image_by_image_gives_the_ranges_of_onnxruntime_all_at_once(tmp_path, monkeypatch):
    """Our image-by-image calibration (bounded memory at large sizes) equals ONNX Runtime's own, all images at once."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import MinMaxCalibrater
    source, flat = tmp_path / "toy.onnx", tmp_path / "flat.onnx"
    onnx.save(shared_bias_model(), source)
    calls = []
    collect = MinMaxCalibrater.collect_data
    monkeypatch.setattr(MinMaxCalibrater, "collect_data", lambda self, reader: calls.append(1) or collect(self, reader))
    options = QuantOptions(target="onnxruntime", samples=3, cache=tmp_path / "ranges.json")
    quantize_file(source, tmp_path / "ours.onnx", "synthetic", options)
    assert len(calls) == 3 and options.cache.is_file()

    class AllAtOnce:
        def __init__(self):
            self.items = iter([{"images": x} for x in calibration_inputs("synthetic", 3, (32, 32))])

        def get_next(self):
            return next(self.items, None)
    model = shared_bias_model()
    unshare_conv_biases(model)
    onnx.save(model, flat)
    quantize_static(str(flat), str(tmp_path / "ort.onnx"), AllAtOnce(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(options.op_types), per_channel=options.per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    assert len(calls) == 4

    def scales(path):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
                if "scale" in i.name or "zero_point" in i.name}
    ours, theirs = scales(tmp_path / "ours.onnx"), scales(tmp_path / "ort.onnx")
    assert ours.keys() == theirs.keys() and len(ours) >= 4
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_merges_images_into_working_ranges(tmp_path, method):
    source, target = tmp_path / "toy.onnx", tmp_path / "toy.int8.onnx"
    onnx.save(shared_bias_model(), source)
    quantize_file(source, target, "synthetic", QuantOptions(target="onnxruntime", method=method, samples=3))
    x = calibration_inputs("synthetic", 1, (32, 32))[0]
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]  # noqa: E731
    fp32, int8 = run(source), run(target)
    assert np.isfinite(int8).all() and np.abs(int8 - fp32).mean() < 0.2 * np.abs(fp32).mean()


def fused_conv_count(path, folder) -> tuple[int, int]:
    """(QLinearConv, Conv) nodes in ONNX Runtime's optimized CPU graph of ``path``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    return ops.count("QLinearConv"), ops.count("Conv")


def test_cpu_flavour_runs_every_conv_as_qlinearconv(tmp_path):
    """(On OffSeg-T the TensorRT flavour, symmetric int8 with float biases, gets 43 of 139 Convs fused.)"""
    source, path = tmp_path / "toy.onnx", tmp_path / "toy.int8.onnx"
    onnx.save(shared_bias_model(), source)
    quantize_file(source, path, "synthetic", QuantOptions(target="onnxruntime", samples=2))
    assert fused_conv_count(path, tmp_path) == (2, 0)


def test_an_int8_file_is_reused_only_for_the_same_source_options_and_images(tmp_path):
    source, target = tmp_path / "toy.onnx", tmp_path / "toy.int8.onnx"
    onnx.save(shared_bias_model(), source)
    options = QuantOptions(target="onnxruntime", samples=2)
    assert quantize_unless_current(source, target, "synthetic", options) is not None
    made = target.stat().st_mtime_ns
    assert quantize_unless_current(source, target, "synthetic", options) is None
    assert target.stat().st_mtime_ns == made
    for changed in (QuantOptions(target="onnxruntime", samples=3), QuantOptions(target="tensorrt", samples=2),
                    QuantOptions(target="onnxruntime", samples=2, method="percentile")):
        assert quantize_unless_current(source, target, "synthetic", changed) is not None, changed
    assert quantize_unless_current(source, target, "synthetic", options) is not None  # back to the first options
    assert quantize_unless_current(source, target, "synthetic", options) is None
    model = shared_bias_model()
    model.metadata_props.add(key="offseg.checkpoint_sha256", value="another checkpoint")  # a re-export
    onnx.save(model, source)
    assert quantize_unless_current(source, target, "synthetic", options) is not None


def test_a_keep_fp32_rule_that_matches_no_node_is_one_sentence(tmp_path, capsys):
    from calibration.cli import calibrate_main
    from calibration.precision import check_user_rules
    from tiny_onnx import write_tiny_onnx

    tiny = write_tiny_onnx(tmp_path / "m.onnx")
    assert check_user_rules(onnx.load(str(tiny)), ["FreqFusion0:Div", "OffsetLearning"], "m.onnx")  # they match
    assert calibrate_main(["--onnx", str(tiny), "--calib-data", "synthetic", "--calib-images", "1", "--output",
                           str(tmp_path / "m.int8.onnx"), "--keep-fp32", "FreqFusion0:Dvi"]) == 2
    err = capsys.readouterr().err
    assert "--keep-fp32 FreqFusion0:Dvi matches no node of" in err and "Traceback" not in err
    assert not (tmp_path / "m.int8.onnx").exists()


def test_fewer_calibration_images_than_asked_are_said(tmp_path, caplog):
    """A folder (or video) with fewer images than --calib-images: all of them are used, and the log says so."""
    import logging

    import cv2
    from tiny_onnx import write_tiny_onnx

    tiny = write_tiny_onnx(tmp_path / "m.onnx")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), np.full((40, 40, 3), 60 * i, np.uint8))
    with caplog.at_level(logging.INFO, logger="calibration"):
        quantize_file(tiny, tmp_path / "q.onnx", images, QuantOptions(target="tensorrt", samples=5))
    assert f"calibrating on 2 images (minmax, tensorrt); {images} gives only 2 of the 5 asked for" in caplog.text


def test_an_unreadable_calibration_image_is_skipped_and_said(tmp_path, caplog):
    """One corrupt file among a folder's images failed the whole calibration; offseg-run skips such files too."""
    import logging

    import cv2
    from calibration.sources import calibration_inputs
    from runtime.errors import OffsegError

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), np.full((40, 40, 3), 60 * i, np.uint8))
    (images / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    with caplog.at_level(logging.WARNING, logger="calibration"):
        inputs = calibration_inputs(images, 3, (32, 32))
    assert len(inputs) == 2 and f"skipping: image {images / '1.png'} is cut short" in caplog.text
    for i in range(3):
        (images / f"{i}.png").write_bytes(b"not an image")
    with pytest.raises(OffsegError, match="no calibration images could be read from"):
        calibration_inputs(images, 3, (32, 32))


@pytest.mark.parametrize("argv, message", [
    (["--output", "OUT/q.txt"], "name the Q/DQ ONNX file NAME.onnx"),
    (["--sensitivity", "--sensitivity-images", "0"], "--sensitivity-images must be at least 1, got 0"),
    (["--sensitivity", "--group-depth", "0"], "--group-depth must be at least 1, got 0"),
    (["--sensitivity", "--exclude-worst", "-1"], "--exclude-worst must be at least 0, got -1"),
    (["--sensitivity-json", "OUT/s.json"], "need --sensitivity"),
    (["--exclude-worst", "1"], "need --sensitivity"),
    (["--sensitivity", "--sensitivity-data", "OUT/nope"], "--sensitivity-data"),
])
def test_calibration_mistakes_are_one_sentence(tmp_path, capsys, argv, message):
    from calibration.cli import calibrate_main
    from tiny_onnx import write_tiny_onnx

    tiny = write_tiny_onnx(tmp_path / "m.onnx")
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    assert calibrate_main(["--onnx", str(tiny), "--calib-data", "synthetic", "--calib-images", "1", "--output",
                           str(tmp_path / "q.onnx"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def reshape_model(opset: int):
    """Conv -> Reshape -> Sigmoid at ``opset``: the Conv in INT8 and the Reshape feeding a float node, as a FreqFusion
    Reshape feeds its FP32-pinned normalisation."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 4, 16, 64], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["c"], name="conv"),
         helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
         helper.make_node("Sigmoid", ["r"], ["logits"], name="sigmoid")],
        "toy", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16, 64])], [weight, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    for key, value in {"offseg.model": "toy", "offseg.num_classes": "4", "offseg.input_size": "32 32"}.items():
        model.metadata_props.add(key=key, value=value)
    return model


@pytest.mark.parametrize("opset", [20, 21, 25])
def test_a_qdq_model_of_opset_21_or_newer_loads_past_onnxruntimes_fault(tmp_path, opset):
    """ONNX Runtime 1.32 refuses its own rewrite of an opset-21+ Q/DQ graph ("output_dtype INT8 does not match
    y_zero_point type UINT8"); ``inference_session`` loads it without the propagation that writes the bad node, and
    it computes what the unoptimised graph does. When the first assertion fails, ONNX Runtime has fixed it."""
    from runtime.backends.ort_backend import inference_session

    source, target = tmp_path / "toy.onnx", tmp_path / "toy.qdq.onnx"
    onnx.save(reshape_model(opset), source)
    quantize_file(source, target, "synthetic", QuantOptions(target="tensorrt", samples=2))
    if opset >= 21:
        with pytest.raises(Exception, match="output_dtype INT8 does not match y_zero_point type UINT8"):
            ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = calibration_inputs("synthetic", 1, (32, 32))[0]
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(str(target), plain, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    actual = inference_session(target, ["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_a_sweep_model_onnxruntime_cannot_run_is_one_sentence(tmp_path, monkeypatch):
    """ONNX Runtime's own exception for a one-group Q/DQ graph (seen with an opset 25 export before
    ``inference_session``) ends the sweep with one sentence naming the group."""
    import calibration.sensitivity as sensitivity
    from runtime.errors import OffsegError
    from tiny_onnx import write_tiny_onnx

    tiny = write_tiny_onnx(tmp_path / "m.onnx", dynamic=False)
    real, calls = sensitivity.labels_of, []

    def refused_once_quantized(path, inputs, info):
        calls.append(path)
        if len(calls) > 1:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Node (view_2_q) Op (QuantizeLinear)\nmore")
        return real(path, inputs, info)

    monkeypatch.setattr(sensitivity, "labels_of", refused_once_quantized)
    inputs = [np.zeros((1, 3, 64, 64), np.float32)]
    with pytest.raises(OffsegError, match=r"cannot run m.onnx with only .* in INT8: .*QuantizeLinear\)"):
        sensitivity.sweep(tiny, "synthetic", inputs, QuantOptions(samples=1), progress=False)
