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


def test_the_demo_reuses_an_engine_only_if_its_sidecar_names_this_onnx(tmp_path, monkeypatch):
    import hashlib

    import chain.commands as commands
    onnx_path, plan = tmp_path / "model.onnx", tmp_path / "model.fp16.plan"
    onnx_path.write_bytes(b"the exported graph")
    builds = []
    monkeypatch.setattr(commands, "run_command", lambda name, argv: builds.append(argv) or 0)

    def planted(sha256: str | None, precision: str = "fp16") -> None:
        plan.write_bytes(b"plan")
        onnx = {} if sha256 is None else {"file_sha256": sha256}
        (tmp_path / "model.fp16.plan.json").write_text(json.dumps({**SIDECAR, "onnx": onnx, "precision": precision}))

    this_onnx = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    for sha256, precision in ((None, "fp16"), ("0" * 64, "fp16"), (this_onnx, "int8")):
        planted(sha256, precision)
        commands.build_engine(onnx_path, plan, "fp16")
    assert len(builds) == 3 and all("--onnx" in argv and str(onnx_path) in argv for argv in builds)
    (tmp_path / "model.fp16.plan.json").write_text("[")  # damaged: rebuilt, not a traceback
    commands.build_engine(onnx_path, plan, "fp16")
    assert len(builds) == 4
    planted(this_onnx)
    assert commands.build_engine(onnx_path, plan, "fp16") == plan and len(builds) == 4
