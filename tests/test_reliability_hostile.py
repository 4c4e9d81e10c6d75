"""Hostile files are data, never instructions: every field read from a sidecar, cache, checkpoint, image or label
is checked where it is read, and sizes taken from files are bounded before anything is allocated."""
import json

import pytest

from runtime.errors import OffsegError

SIDECAR = {"format": "offseg-engine/1", "num_classes": 9, "onnx": {}, "precision": "fp16", "gpu": None,
           "tensorrt": {"module": "tensorrt", "version": "10.3.0", "version_compatible": False}, "dla_core": None}


@pytest.mark.parametrize("fields, message", [
    ({"dla_core": "1"}, r"wrong type of dla_core \(str\)"),
    ({"dla_core": True}, r"wrong type of dla_core \(bool\)"),
    ({"dla_core": 1.5}, r"wrong type of dla_core \(float\)"),
    ({"dla_core": -1}, r"dla_core -1 is not a DLA core \(0 or more, or null for the GPU\)"),
    ({"tensorrt": {"version_compatible": "yes"}}, r"wrong type of tensorrt\.version_compatible \(str\)"),
    ({"tensorrt": {"version": ["10.3.0"]}}, r"wrong type of tensorrt\.version \(list\)"),
], ids=["dla str", "dla bool", "dla float", "dla negative", "version_compatible str", "version list"])
def test_a_sidecar_field_of_the_wrong_type_or_range_is_one_sentence(tmp_path, fields, message):
    from runtime.engine_meta import read_sidecar
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"plan")
    (tmp_path / "m.plan.json").write_text(json.dumps({**SIDECAR, **fields}))
    with pytest.raises(OffsegError, match=message):
        read_sidecar(engine)


def test_a_deeply_nested_sidecar_is_one_sentence(tmp_path):
    from runtime.engine_meta import read_sidecar
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"plan")
    (tmp_path / "m.plan.json").write_text('{"format": "offseg-engine/1", "onnx": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(OffsegError, match="cannot read .*m.plan.json"):
        read_sidecar(engine)


def test_a_valid_sidecar_with_a_dla_core_is_read(tmp_path):
    from runtime.engine_meta import read_sidecar
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"plan")
    (tmp_path / "m.plan.json").write_text(json.dumps({**SIDECAR, "dla_core": 1}))
    assert read_sidecar(engine)["dla_core"] == 1
