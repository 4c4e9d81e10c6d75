"""``offseg-export --format deepstream``: the config parses with GLib's own key-file parser, every key is one
nvinfer reads, I/O matches the ONNX, and nvinfer's preprocessing and segmentation parser, emulated in numpy,
give PyTorch's labels."""
import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from calibration.nvinfer import NvinferEmulation
from exported import export_small_model
from export.cli import main as export_main
from offseg.checkpoint import build_from_checkpoint
from glib_key_file import read_with_glib
from runtime.preprocess import fit_frame, normalize_bgr

SIZE = (64, 96)
ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.xdist_group("deepstream")  # one worker builds the package fixture


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deepstream")
    checkpoint, _ = export_small_model(folder, input_size=SIZE)
    output = folder / "offseg-t-deepstream"
    assert export_main(["--checkpoint", str(checkpoint), "--input-size", *map(str, SIZE), "--format", "deepstream",
                        "--output", str(output), "--no-check"]) == 0
    return checkpoint, output


@pytest.mark.slow
def test_config_parses_with_glib_and_uses_only_nvinfer_keys(package):
    _, folder = package
    groups = read_with_glib(folder / "config_infer_primary_offseg.txt")
    known = set(json.loads((ROOT / "export" / "nvinfer_properties.json").read_text())["property"])
    props = groups["property"]
    assert list(groups) == ["property"] and set(props) <= known, set(props) - known
    assert yaml.safe_load((folder / "config_infer_primary_offseg.yml").read_text())["property"] == {
        k: yaml.safe_load(v) for k, v in props.items()}  # the YAML twin says the same
    session = ort.InferenceSession(str(folder / props["onnx-file"]), providers=["CPUExecutionProvider"])
    model_input, model_output = session.get_inputs()[0], session.get_outputs()[0]
    assert props["infer-dims"] == ";".join(map(str, model_input.shape[1:])) == f"3;{SIZE[0]};{SIZE[1]}"
    assert props["output-blob-names"] == model_output.name == "probs" and props["network-type"] == "2"
    assert int(props["num-detected-classes"]) == model_output.shape[1] == 9
    assert len((folder / props["labelfile-path"]).read_text().splitlines()) == 9
    pipeline = (folder / "pipeline.sh").read_text()
    assert f"nvsegvisual width={SIZE[1] // 4} height={SIZE[0] // 4}" in pipeline
    # the muxer keeps the video's size (it would stretch frames to the model's), nvinfer letterboxes
    assert 'width="${MUX_WIDTH:-1920}" height="${MUX_HEIGHT:-1080}"' in pipeline


@pytest.mark.slow
def test_emulated_nvinfer_gives_the_pytorch_labels(package):
    checkpoint, folder = package
    # 80x150: nvinfer's truncated 51.2 rows and offseg-run's rounded ones agree (tests/test_nvinfer_emulation.py)
    frame = cv2.resize(np.random.default_rng(5).integers(0, 256, (9, 12, 3), dtype=np.uint8), (150, 80))
    labels, _ = NvinferEmulation(folder).mask(frame)
    model, _ = build_from_checkpoint(checkpoint)
    fitted, _ = fit_frame(frame, SIZE, "letterbox")
    with torch.no_grad():
        expected = model(torch.from_numpy(normalize_bgr(fitted))).argmax(1)[0].numpy()
    assert labels.min() >= 0 and np.array_equal(labels, expected)


def test_logits_are_refused_for_deepstream(tmp_path, capsys):
    assert export_main(["--format", "deepstream", "--output-kind", "logits", "--output", str(tmp_path / "p")]) == 2
    assert "starts each pixel at -1" in capsys.readouterr().err and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_a_package_from_an_exported_file_is_the_package_from_its_checkpoint(package, tmp_path, capsys):
    """``--onnx FILE --format deepstream``: the file (exported for nvinfer: the package's own) copied in, the same
    config and labels; a file exported otherwise (``export_small_model``'s normalized one) is refused in one
    sentence that says how to make the package."""
    checkpoint, from_checkpoint = package
    folder = tmp_path / "from-onnx"
    assert export_main(["--onnx", str(from_checkpoint / "offseg-t.onnx"), "--format", "deepstream", "--output",
                        str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in from_checkpoint.iterdir())
    for name in ("config_infer_primary_offseg.txt", "labels.txt", "offseg-t.onnx"):
        assert (folder / name).read_bytes() == (from_checkpoint / name).read_bytes(), name
    normalized = checkpoint.with_name("t.onnx")
    capsys.readouterr()
    assert export_main(["--onnx", str(normalized), "--format", "deepstream", "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"feeds float RGB 0-255, and {normalized} was exported otherwise" in err and "--checkpoint" in err
    assert not (tmp_path / "p").exists()


def test_offseg_info_describes_the_package_and_its_model(package, capsys):
    from chain.cli import info_main
    _, package = package
    assert info_main([str(package)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{package}: DeepStream package holding 1 model; on the device: cd {package} && sh " \
        "pipeline.sh VIDEO.mp4"
    assert lines[1].startswith(f"{package / 'offseg-t.onnx'}: ONNX model of offseg-t, 9 classes, fp32")
    assert "  input    batch 1, 64x96, float32 RGB 0-255 NCHW" in lines and "  output   probs (N, 9, h, w)" in lines
