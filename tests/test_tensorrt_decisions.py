"""The TensorRT build decisions and the engine sidecar checks (plain functions, no TensorRT needed)."""
import json

import pytest

from calibration.precision import DEFAULT_PINS, PinRule, pinned
from export.tensorrt import (EngineOptions, TrtCapabilities, explain_build_failure, layers_to_pin, plan_build,
                             profile_shapes)
from runtime.engine_meta import SIDECAR_FORMAT, check_engine, compatibility_problems, read_sidecar, write_sidecar
from runtime.errors import OffsegError

TRT10_JETSON = TrtCapabilities("tensorrt", "10.3.0", precision_flags=True, precision_constraints=True, dla_cores=2)
TRT10_X86 = TrtCapabilities("tensorrt", "10.13.0", precision_flags=True, precision_constraints=True, dla_cores=0)
TRT11 = TrtCapabilities("tensorrt", "11.0.0", precision_flags=False, precision_constraints=False)


def test_tensorrt10_uses_builder_flags_and_pins_layers():
    plan = plan_build(EngineOptions(fp16=True), TRT10_X86, dynamic=False)
    assert plan.onnx_precision == "fp32" and not plan.strongly_typed and plan.pin_layers
    assert set(plan.flags) == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    plan = plan_build(EngineOptions(fp16=True, int8=True), TRT10_X86, dynamic=True)
    assert plan.onnx_precision == "int8" and {"FP16", "INT8"} <= set(plan.flags)
    assert plan_build(EngineOptions(), TRT10_X86, False).flags == ()
    assert not plan_build(EngineOptions(fp16=True, pins=()), TRT10_X86, False).pin_layers


def test_tensorrt11_builds_strongly_typed_from_the_precision_graph():
    assert plan_build(EngineOptions(fp16=True), TRT11, False).onnx_precision == "fp16"
    plan = plan_build(EngineOptions(int8=True), TRT11, False)
    assert plan.onnx_precision == "int8" and plan.strongly_typed and plan.flags == () and not plan.pin_layers
    with pytest.raises(OffsegError, match="strongly typed"):
        plan_build(EngineOptions(fp16=True, int8=True), TRT11, False)


@pytest.mark.parametrize("options, caps, dynamic, message", [
    (EngineOptions(fp16=True, dla_core=0), TRT11, False, "no DLA support"),
    (EngineOptions(fp16=True, dla_core=0), TRT10_X86, False, "no DLA core"),
    (EngineOptions(fp16=True, dla_core=2), TRT10_JETSON, False, "does not exist"),
    (EngineOptions(dla_core=0), TRT10_JETSON, False, "FP16 or INT8 only"),
    (EngineOptions(fp16=True, dla_core=0), TRT10_JETSON, True, "static input size"),
])
def test_impossible_dla_builds_are_refused_with_a_reason(options, caps, dynamic, message):
    with pytest.raises(OffsegError, match=message):
        plan_build(options, caps, dynamic)


@pytest.mark.parametrize("caps", [TRT10_X86, TRT11])
def test_tf32_is_off_unless_asked(caps):
    assert not plan_build(EngineOptions(), caps, False).tf32
    assert plan_build(EngineOptions(tf32=True), caps, False).tf32


def test_dla_build_falls_back_to_gpu():
    plan = plan_build(EngineOptions(int8=True, dla_core=1, version_compatible=True), TRT10_JETSON, False)
    assert plan.dla_core == 1 and {"GPU_FALLBACK", "INT8", "VERSION_COMPATIBLE"} <= set(plan.flags)


def test_profile_covers_symbolic_dimensions_only():
    options = EngineOptions(max_batch=4, shapes=((256, 256), (512, 512), (1024, 2048)))
    assert profile_shapes([1, 3, 512, 512], options) == {}
    assert profile_shapes(["batch", 3, "h", "w"], options) == {
        "min": (1, 3, 256, 256), "opt": (1, 3, 512, 512), "max": (4, 3, 1024, 2048)}
    assert profile_shapes(["batch", 3, 512, 512], options)["max"] == (4, 3, 512, 512)


@pytest.mark.parametrize("options, message", [
    (EngineOptions(shapes=((256, 256), (500, 512), (1024, 1024))), "multiples of 32"),
    (EngineOptions(shapes=((512, 512), (256, 256), (1024, 1024))), "must grow"),
    (EngineOptions(optimization_level=7), "0..5"),
    (EngineOptions(workspace_mib=0), "positive"),
])
def test_bad_engine_options_are_explained(options, message):
    with pytest.raises(OffsegError, match=message):
        options.validate()


def test_layers_of_pinned_nodes_are_found_despite_parser_suffixes():
    layers = ["OffsetLearning/node_softmax_1", "OffsetLearning/node_softmax_1_output", "node_conv_3",
              "FreqFusion0/node_div_2", "FreqFusion0/node_conv_1"]
    assert layers_to_pin(layers, ["OffsetLearning/node_softmax_1", "FreqFusion0/node_div_2"]) == [
        "OffsetLearning/node_softmax_1", "OffsetLearning/node_softmax_1_output", "FreqFusion0/node_div_2"]
    assert layers_to_pin(layers, []) == []


def test_default_pins_cover_the_head_and_fusion_normalisation_only():
    assert pinned("OffsetLearning/node_matmul_3", "MatMul")
    assert pinned("FreqFusion2/node_softmax_1", "Softmax") and pinned("FreqFusion0/node_clamp_min", "Max")
    assert not pinned("FreqFusion2/node_conv2d_4", "Conv") and not pinned("node_Div_9", "Div")
    assert PinRule.parse("Backbone:Softmax,Div") == PinRule("Backbone", ("Softmax", "Div"))
    assert str(DEFAULT_PINS[0]) == "OffsetLearning"
    with pytest.raises(OffsegError, match="prefix"):
        PinRule.parse(":Softmax")


def test_default_pins_keep_the_gather_forms_unit_vectors_and_sampling_corners_whole():
    assert pinned("FreqFusion1/unit_vectors/node_matmul_2", "MatMul") and pinned("FreqFusion1/unit_vectors/x", "Mul")
    assert pinned("FreqFusion2/sampling_corners/node_add_9", "Add")
    assert not pinned("FreqFusion2/node_matmul_4", "MatMul")  # CARAFE's MatMuls run in FP16
    assert PinRule("FreqFusion*/unit_vectors/").matches("FreqFusion0/unit_vectors/n", "Sqrt")
    assert not PinRule("FreqFusion*/unit_vectors/").matches("FreqFusion0/node_sqrt", "Sqrt")


def test_freqfusion_form_auto_is_gather_for_onnx_and_taps_for_engines():
    from offseg.names import freqfusion_form_for
    assert freqfusion_form_for("auto", "onnx") == "gather" and freqfusion_form_for("auto", "engine") == "taps"
    assert freqfusion_form_for("gather", "engine") == "gather"


def test_build_failures_get_one_actionable_sentence():
    jetson = explain_build_failure(["[optimizer] Could not find any implementation for node X"],
                                   EngineOptions(workspace_mib=4096))
    assert "--workspace" in jetson and "4096" in jetson
    assert "out of GPU memory" in explain_build_failure(["cudaMalloc: out of memory"], EngineOptions())
    assert explain_build_failure([], EngineOptions()).startswith("TensorRT could not build")


SIDECAR = {"model": "offseg-t", "num_classes": 19, "precision": "fp16",
           "tensorrt": {"module": "tensorrt", "version": "10.3.0", "version_compatible": False,
                        "hardware_compatibility": "NONE"},
           "gpu": {"name": "Orin", "compute_capability": "8.7"}}
ORIN = {"name": "Orin", "compute_capability": "8.7"}


def test_engine_for_another_tensorrt_gpu_or_class_count_is_refused():
    assert compatibility_problems(SIDECAR, "10.3.0", ORIN, 19) == []
    assert "TensorRT 10.3.0, this is TensorRT 10.3.1" in compatibility_problems(SIDECAR, "10.3.1", ORIN, 19)[0]
    problems = compatibility_problems(SIDECAR, "10.7.0", {"name": "RTX 4090", "compute_capability": "8.9"}, 150)
    assert len(problems) == 3 and "TensorRT 10.3.0" in problems[0] and "RTX 4090" in problems[1]
    assert compatibility_problems(SIDECAR, "10.3.0", None) == ["no CUDA GPU is available here"]
    portable = {**SIDECAR, "tensorrt": {**SIDECAR["tensorrt"], "version_compatible": True,
                                         "hardware_compatibility": "AMPERE_PLUS"}}
    assert compatibility_problems(portable, "10.7.0", {"name": "RTX 4090", "compute_capability": "8.9"}) == []
    rtx = {**SIDECAR, "tensorrt": {"module": "tensorrt_rtx", "version": "1.7"}}
    assert "tensorrt_rtx" in compatibility_problems(rtx, "10.3.0", ORIN)[0]


def test_sidecar_round_trip_and_clear_errors(tmp_path):
    engine = tmp_path / "m.plan"
    with pytest.raises(OffsegError, match="no sidecar"):
        read_sidecar(engine)
    write_sidecar(engine, SIDECAR)
    assert json.loads((tmp_path / "m.plan.json").read_text())["format"] == SIDECAR_FORMAT
    assert check_engine(engine, "10.3.0", ORIN, 19)["precision"] == "fp16"
    with pytest.raises(OffsegError, match="cannot run .*classes"):
        check_engine(engine, "10.3.0", ORIN, 150)
    (tmp_path / "m.plan.json").write_text("{not json")
    with pytest.raises(OffsegError, match="cannot read"):
        read_sidecar(engine)
