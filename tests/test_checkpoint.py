"""Checkpoint loading: official mmseg files, our own format, strictness, and safety."""
import json
import os
import pickle
import re
import sys
import types

import pytest
import torch

import reference
from offseg import OffsegError, build_model, load_checkpoint, save_checkpoint
from offseg.checkpoint import build_from_checkpoint, read_file, serialize


@pytest.fixture(scope="module")
def official_state():
    return reference.official_state_dict("offseg-t")


def save_official(path, state, **extra):
    torch.save({"meta": {"env": "x"}, "state_dict": state, **extra}, path)
    return path


def test_missing_key_is_named(tmp_path, official_state):
    state = dict(official_state)
    del state["decode_head.align.conv.weight"]
    with pytest.raises(OffsegError, match=r"missing: head\.align\.conv\.weight"):
        load_checkpoint(build_model("offseg-t"), save_official(tmp_path / "c.pth", state))


def test_unexpected_key_is_named(tmp_path, official_state):
    state = dict(official_state, **{"decode_head.extra.weight": torch.zeros(3)})
    with pytest.raises(OffsegError, match=r"unexpected: head\.extra\.weight"):
        load_checkpoint(build_model("offseg-t"), save_official(tmp_path / "c.pth", state))


def test_misshaped_key_is_named(tmp_path, official_state):
    state = dict(official_state)
    state["decode_head.pre.0.gn.weight"] = torch.zeros(7)
    with pytest.raises(OffsegError, match=r"wrong shape: head\.pre\.0\.gn\.weight \(7,\)"):
        load_checkpoint(build_model("offseg-t"), save_official(tmp_path / "c.pth", state))


def test_class_count_mismatch_says_what_to_do(tmp_path, official_state):
    with pytest.raises(OffsegError, match="is for 150 classes"):
        load_checkpoint(build_model("offseg-t", num_classes=19), save_official(tmp_path / "c.pth", official_state))


def test_unused_official_keys_are_skipped_and_others_are_not(tmp_path, official_state):
    assert "decode_head.conv_seg.weight" in official_state
    load_checkpoint(build_model("offseg-t"), save_official(tmp_path / "c.pth", official_state))


def test_ddp_prefix_is_accepted(tmp_path, official_state):
    state = {f"module.{k}": v for k, v in official_state.items()}
    load_checkpoint(build_model("offseg-t"), save_official(tmp_path / "c.pth", state))


def test_mmengine_objects_of_uninstalled_classes_do_not_block_loading(tmp_path, official_state):
    """A message hub pickled from a class that is not installed here still lets the weights load."""
    module = types.ModuleType("mmengine_history_buffer_not_installed")

    class HistoryBuffer:
        def __init__(self):
            self.values = [1.0, 2.0]

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    sys.modules[module.__name__] = module
    try:
        save_official(tmp_path / "c.pth", official_state, message_hub={"loss": HistoryBuffer()})
    finally:
        del sys.modules[module.__name__]
    model = build_model("offseg-t")
    load_checkpoint(model, tmp_path / "c.pth")
    assert torch.equal(model.state_dict()["head.align.conv.weight"], official_state["decode_head.align.conv.weight"])


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_never_executed(tmp_path, official_state):
    marker = tmp_path / "pwned"
    save_official(tmp_path / "c.pth", official_state, meta=Exploit(marker))
    with pytest.raises(OffsegError, match="refused to unpickle code"):
        load_checkpoint(build_model("offseg-t"), tmp_path / "c.pth")
    assert not marker.exists()


def test_weights_that_are_not_tensors_are_refused(tmp_path, official_state):
    state = dict(official_state)
    state["decode_head.align.conv.weight"] = state["decode_head.align.conv.weight"].numpy()
    with pytest.raises(OffsegError, match="must be tensors"):
        load_checkpoint(build_model("offseg-t"), save_official(tmp_path / "c.pth", state))


@pytest.mark.parametrize("content, reason", [(b"", "ends early"), (b"not a checkpoint at all", "not a PyTorch file"),
                                             (b"\x00\x00\x00\x18ftypisom", "not a PyTorch file"),
                                             (b"hi\n", "not a PyTorch file"),  # torch: KeyError(104)
                                             (b"\x08\x08\x12\x07pytorch", "not a PyTorch file"),  # an ONNX file
                                             (serialize({"a": 1})[:200], "zip archive"),  # cut short
                                             (pickle.dumps([1, 2, 3]), "not a PyTorch file"),
                                             (serialize([1, 2, 3]), "holds a list")])
def test_unreadable_files_give_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(OffsegError, match=f"checkpoint .*{reason}") as error:
        load_checkpoint(build_model("offseg-t"), path)
    assert "weights_only" not in str(error.value)  # torch's advice to unpickle the file unsafely is not passed on


@pytest.mark.parametrize("name, kind", [("m.onnx", "an ONNX model"), ("m.plan", "a TensorRT engine"),
                                        ("m.ENGINE", "a TensorRT engine")])
def test_an_exported_model_given_as_a_checkpoint_points_to_offseg_validate(tmp_path, name, kind):
    path = tmp_path / name
    path.write_bytes(b"\x08\x08\x12\x07pytorch")
    with pytest.raises(OffsegError, match=f"cannot read checkpoint {re.escape(str(path))}: it is {kind}, not a PyTorch "
                                          r"checkpoint: give the .pth it was exported from \(offseg-validate --engine "
                                          f"{re.escape(str(path))} --checkpoint CHECKPOINT scores it"):
        read_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(OffsegError, match="does not exist"):
        load_checkpoint(build_model("offseg-t"), tmp_path / "nope.pth")


def test_own_format_round_trip_and_inference_of_name_and_classes(tmp_path):
    torch.manual_seed(0)
    model = build_model("offseg-b", num_classes=19)
    path = save_checkpoint(model, tmp_path / "sub" / "mine.pth", "offseg-b", iteration=7)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind
    loaded, name = build_from_checkpoint(path)
    assert name == "offseg-b" and loaded.num_classes == 19 and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["offseg-t", "offseg-l"])
def test_official_checkpoint_model_is_inferred(tmp_path, name):
    path = save_official(tmp_path / "c.pth", reference.official_state_dict(name))
    model, inferred = build_from_checkpoint(path)
    assert inferred == name and model.num_classes == 150


@pytest.mark.parametrize("meta", [
    {"dataset_meta": {"classes": ["wall ", "floor"], "palette": [[120, 120, 120], [80, 50, 50]]}},  # mmseg 1.x
    {"CLASSES": ("wall ", "floor"), "PALETTE": [[120, 120, 120], [80, 50, 50]]},  # mmseg 0.x
])
def test_class_names_and_palette_are_read_from_mmseg_meta(tmp_path, meta):
    from export.onnx import label_metadata
    from offseg.checkpoint import checkpoint_labels
    path = tmp_path / "official.pth"
    torch.save({"meta": meta, "state_dict": {}}, path)
    assert checkpoint_labels(read_file(path)) == (["wall", "floor"], [[120, 120, 120], [80, 50, 50]])
    labels = label_metadata(2, path)
    assert json.loads(labels["offseg.classes"]) == ["wall", "floor"]
    assert json.loads(labels["offseg.palette"]) == [[120, 120, 120], [80, 50, 50]]


def test_released_datasets_are_named_by_class_count(tmp_path):
    from export.onnx import label_metadata
    from runtime.backends import ModelInfo
    from runtime.draw import class_names, palette_for
    torch.save({"meta": {}, "state_dict": {}}, tmp_path / "bare.pth")
    for count, first in [(150, "wall"), (19, "road"), (171, "person"), (59, "aeroplane")]:
        meta = {"offseg.model": "offseg-t", "offseg.num_classes": str(count),
                **label_metadata(count, tmp_path / "bare.pth")}
        info = ModelInfo.from_metadata(meta)
        assert class_names(info)[0] == first and len(class_names(info)) == count
        colours = palette_for(info)
        assert colours.shape == (count, 3) and len({tuple(c) for c in colours}) == count
    unknown = ModelInfo.from_metadata({"offseg.model": "offseg-t", "offseg.num_classes": "7"})
    assert class_names(unknown) == tuple(f"class {i}" for i in range(7))
