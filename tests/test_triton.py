"""``offseg-export --format triton``: the repository's config.pbtxt parses with Triton's own schema
(tritonclient's model_config_pb2 and protobuf's text format) and states the ONNX graph's I/O and our metadata."""
import onnx
import pytest

from exported import export_small_model
from export.cli import main as export_main
from runtime.backends import ModelInfo

SIZE = (64, 96)


@pytest.mark.slow
def test_repository_config_parses_with_tritons_schema_and_matches_the_onnx(tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient is not installed: pip install 'offseg-deploy[triton]'")
    from google.protobuf import text_format

    checkpoint, _ = export_small_model(tmp_path, input_size=SIZE)
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


def test_a_dynamic_batch_gives_max_batch_size_dynamic_batching_and_minus_one_dims(tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient is not installed: pip install 'offseg-deploy[triton]'")
    from google.protobuf import text_format
    from export.triton import config_text
    from tiny_onnx import NUM_CLASSES, write_tiny_onnx

    model = onnx.load(str(write_tiny_onnx(tmp_path / "tiny.onnx", dynamic=True)))
    meta = {p.key: p.value for p in model.metadata_props}
    config = text_format.Parse(config_text("offseg-t", model, meta, max_batch=8), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [NUM_CLASSES, -1, -1]
