"""The numpy emulation of DeepStream's nvinfer (``calibration.nvinfer``, ``offseg-validate --deepstream``): its
segmentation parser's -1 rule, its preprocessing against ``runtime.preprocess`` for the package's config, the
letterbox undone on the masks, the key file read as GLib reads it, and the package's mIoU against PyTorch."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from calibration.cli import validate_main
from calibration.nvinfer import (NvinferConfig, NvinferEmulation, Placement, _read_with_configparser, mask_to_frame,
                                 parse_segmentation, placement, preprocess)
from export.cli import main as export_main
from export.deepstream import CONFIG, key_file, nvinfer_properties
from offseg import build_model, save_checkpoint
from runtime.backends import ModelInfo
from runtime.errors import OffsegError
from runtime.metrics import ConfusionMatrix
from glib_key_file import read_with_glib
from runtime.preprocess import fit_frame, to_model_input

SIZE = (64, 96)


def _config(folder, **changes) -> NvinferConfig:
    """The config offseg-export writes for a probs model at SIZE, with ``changes`` (key -> value) applied."""
    info = ModelInfo("offseg-t", 5, SIZE, "float-rgb-0-255", "probs")
    props = {**nvinfer_properties(info, "offseg-t.onnx", fp16=False), **changes}
    (folder / CONFIG).write_text(key_file(props, "# test\n"))
    return NvinferConfig.read(folder)


def _frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def test_the_parser_starts_each_pixel_at_minus_one_and_keeps_a_class_only_above_the_threshold():
    # pixel (0,0): all logits negative; (0,1): best 0.3 under threshold 0.5; (0,2): tie at 0.9 -> first class;
    # (1,0): 0.6, then 0.7 above it -> 2; (1,1): 0.5 is not above 0.5 -> -1; (1,2): NaN never wins -> 1
    scores = np.array([[[-2.0, 0.3, 0.9], [0.6, 0.5, np.nan]],
                       [[-1.0, 0.2, 0.9], [0.1, 0.4, 0.7]],
                       [[-0.5, 0.1, 0.2], [0.7, 0.2, 0.1]]], np.float32)
    expected = np.array([[-1, -1, 0], [2, -1, 1]])
    assert np.array_equal(parse_segmentation(scores, 0.5), expected)
    assert np.array_equal(parse_segmentation(scores.transpose(1, 2, 0), 0.5, nhwc=True), expected)
    # threshold 0 (the package's): logits below 0 are -1, probabilities always give the arg-max
    assert np.array_equal(parse_segmentation(scores, 0.0), [[-1, 0, 0], [2, 0, 1]])
    logits = np.random.default_rng(1).normal(size=(9, 5, 7)).astype(np.float32)
    probs = torch.softmax(torch.from_numpy(logits), 0).numpy()
    assert np.array_equal(parse_segmentation(probs, 0.0), logits.argmax(0))
    shifted = logits - 1.5  # logits as OffSeg outputs them: often all negative at a pixel
    labels = parse_segmentation(shifted, 0.0)
    assert (labels == -1).any() and np.array_equal(labels, np.where(shifted.max(0) > 0, shifted.argmax(0), -1))


def test_a_pixel_with_no_class_counts_as_wrong_in_the_miou():
    confusion = ConfusionMatrix(2)
    confusion.update(np.array([0, -1, 1, 1]), np.array([0, 0, 1, 1]))
    scores = confusion.scores()
    assert scores.iou.tolist() == [0.5, 1.0] and scores.aacc == 0.75 and confusion.missed.tolist() == [1, 0]


@pytest.mark.parametrize("frame_size", [(100, 240), (120, 90), (128, 192), (64, 96)])
def test_preprocessing_equals_the_runtime_letterbox_for_the_package_config(tmp_path, frame_size):
    config = _config(tmp_path)
    frame = _frame(*frame_size)
    emulated, place = preprocess(frame, config)
    fitted, geometry = fit_frame(frame, SIZE, "letterbox")
    assert place.size == geometry.content_size and (place.top, place.left) == (0, 0)
    assert emulated.shape == (1, 3, *SIZE) and emulated.dtype == np.float32
    np.testing.assert_allclose(emulated, to_model_input([fitted], "float-rgb-0-255"), atol=1e-5, rtol=0)


def test_nvinfer_truncates_the_scaled_size_and_crops_odd_sides(tmp_path):
    config = _config(tmp_path)
    # 90x150 into 64x96: 96 * 90 / 150 = 57.6 rows; nvinfer truncates (57), offseg-run rounds (58)
    assert placement((90, 150), config).size == (57, 96)
    assert fit_frame(_frame(90, 150), SIZE, "letterbox")[1].content_size == (58, 96)
    assert placement((91, 151), config) == Placement((90, 150), 0, 0, (57, 96))  # GST_ROUND_DOWN_2 of the source
    stretched = _config(tmp_path, **{"maintain-aspect-ratio": "0"})
    assert placement((90, 150), stretched).size == SIZE


def test_bgr_offsets_scale_and_symmetric_padding_follow_the_config(tmp_path):
    frame = _frame(100, 240)  # scaled to 40x96: 24 rows of padding
    plain, _ = preprocess(frame, _config(tmp_path))
    config = _config(tmp_path, **{"model-color-format": "1", "offsets": "10;20;30", "net-scale-factor": "0.5",
                                  "symmetric-padding": "1"})
    changed, place = preprocess(frame, config)
    assert place == Placement((100, 240), 12, 0, (40, 96))
    offsets = np.array([10, 20, 30], np.float32)[:, None, None]
    np.testing.assert_allclose(changed[0, :, 12:52], 0.5 * (plain[0, ::-1, :40] - offsets), atol=1e-5, rtol=0)
    np.testing.assert_allclose(changed[0, :, :12], np.broadcast_to(-0.5 * offsets, (3, 12, 96)))
    np.testing.assert_allclose(changed[0, :, 52:], np.broadcast_to(-0.5 * offsets, (3, 12, 96)))


@pytest.mark.parametrize("symmetric", ["0", "1"])
@pytest.mark.parametrize("frame_size", [(100, 240), (120, 90), (91, 151)])
def test_masks_are_mapped_back_onto_the_frame_without_the_padding(tmp_path, symmetric, frame_size):
    config = _config(tmp_path, **{"symmetric-padding": symmetric})
    place = placement(frame_size, config)
    content = np.zeros(SIZE, np.float32)
    content[place.top:place.top + place.size[0], place.left:place.left + place.size[1]] = 1
    for cells in (SIZE, (SIZE[0] // 4, SIZE[1] // 4)):  # labels at the input size, or a 1/4-size mask
        mask = cv2.resize(content, cells[::-1], interpolation=cv2.INTER_AREA)  # share of content in each cell
        mapped = mask_to_frame(mask, place, SIZE, frame_size)
        assert mapped.shape == frame_size and (mapped > 0).all()  # no frame pixel lands on padding alone
    # the frame's top-left and bottom-right pixels land in the content's first and last mask cells
    ramp = np.arange(SIZE[0] * SIZE[1]).reshape(SIZE)
    mapped = mask_to_frame(ramp, place, SIZE, frame_size)
    assert mapped[0, 0] == ramp[place.top, place.left]
    assert mapped[-1, -1] == ramp[place.top + place.size[0] - 1, place.left + place.size[1] - 1]


TRICKY_KEY_FILE = """# a comment
[property]
  gpu-id = 0
net-scale-factor=2
net-scale-factor=1.0
; not-a-comment=3
empty=
[other]
a=b # not a comment either
[property]
offsets=1;2;3;
"""


def test_the_configparser_fallback_reads_key_files_as_glib_does(tmp_path):
    tricky = tmp_path / "tricky.txt"
    tricky.write_text(TRICKY_KEY_FILE)
    package = tmp_path / "package"
    package.mkdir()
    _config(package)
    for path in (tricky, package / CONFIG):
        assert _read_with_configparser(path) == read_with_glib(path)
    trailing = tmp_path / "trailing.txt"
    trailing.write_text("[property]\nnet-scale-factor=1 \n")
    assert read_with_glib(trailing)["property"]["net-scale-factor"] == "1 "  # GLib keeps it, nvinfer then misreads it
    with pytest.raises(OffsegError, match="ends in whitespace"):
        _read_with_configparser(trailing)
    broken = tmp_path / "broken.txt"
    broken.write_text("[property]\n  a continuation line\n")
    assert "error" in read_with_glib(broken)
    with pytest.raises(OffsegError, match="not a key file GLib"):
        _read_with_configparser(broken)


def test_a_config_the_emulation_cannot_follow_is_one_sentence(tmp_path, capsys):
    with pytest.raises(OffsegError, match="scaling-filter=5 is outside"):
        _config(tmp_path, **{"scaling-filter": "5"})
    with pytest.raises(OffsegError, match="offsets='1;2' needs one value per colour channel"):
        _config(tmp_path, offsets="1;2")
    assert validate_main(["--deepstream", str(tmp_path / "missing"), "--checkpoint", "x.pth"]) == 2
    assert "no nvinfer config at" in capsys.readouterr().err
    assert validate_main(["--deepstream", str(tmp_path), "--checkpoint", "x.pth", "--mode", "whole"]) == 2
    assert "--mode applies to --engine" in capsys.readouterr().err


@pytest.fixture(scope="module")
def letterbox_package(tmp_path_factory):
    """A seeded OffSeg-T's DeepStream package at 64x128: the synthetic 256x384 scenes are letterboxed into it."""
    folder = tmp_path_factory.mktemp("nvinfer")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model("offseg-t", 9).eval(), folder / "t.pth", "offseg-t")
    assert export_main(["--checkpoint", str(checkpoint), "--input-size", "64", "128", "--format", "deepstream",
                        "--output", str(folder / "package"), "--no-check"]) == 0
    return checkpoint, folder / "package"


@pytest.mark.slow
def test_offseg_validate_deepstream_is_within_0_1_miou_of_pytorch(letterbox_package, tmp_path, capsys):
    checkpoint, package = letterbox_package
    report = tmp_path / "report"
    assert validate_main(["--deepstream", str(package), "--checkpoint", str(checkpoint), "--eval-images", "3",
                          "--report", str(report)]) == 0
    content = json.loads((report / "report.json").read_text())
    summary = content["summary"]
    assert summary["images"] == 3 and abs(summary["miou_delta"]) <= 0.1 and summary["pixel_agreement"] > 99
    assert "frames through nvinfer" in capsys.readouterr().out
    # report.md shows each class's IoU as the mIoU (two decimals; it printed the JSON's 4-decimal floats)
    first = content["per_class"][0]
    assert (f"| {first['class']} | {first['reference_iou']:.2f} | {first['engine_iou']:.2f} | {first['delta']:+.2f} |"
            in (report / "report.md").read_text())


@pytest.mark.slow
def test_a_threshold_above_the_probabilities_fails_the_gate(letterbox_package, tmp_path, capsys):
    checkpoint, source = letterbox_package
    package = tmp_path / "package"
    shutil.copytree(source, package)
    config = package / CONFIG
    config.write_text(config.read_text().replace("segmentation-threshold=0.0", "segmentation-threshold=0.9"))
    assert validate_main(["--deepstream", str(package), "--checkpoint", str(checkpoint), "--eval-images", "2",
                          "--report", str(tmp_path / "report")]) == 1
    out = capsys.readouterr().out
    assert "got no class (nvinfer's -1" in out and "FAIL: the mIoU drop" in out


@pytest.mark.slow
def test_a_labels_package_is_read_from_its_tensor_meta(letterbox_package, tmp_path):
    """TAO's form (network-type=100, INT32 NHWC labels at the input size): the labels tensor is read as it is."""
    checkpoint, _ = letterbox_package
    package = tmp_path / "labels-package"
    assert export_main(["--checkpoint", str(checkpoint), "--input-size", "64", "128", "--format", "deepstream",
                        "--output-kind", "labels", "--label-dtype", "int32", "--layout", "nhwc",
                        "--output", str(package), "--no-check"]) == 0
    emulation = NvinferEmulation(package)
    assert emulation.config.network_type == 100 and emulation.mask_size == (64, 128)
    report = tmp_path / "report"
    assert validate_main(["--deepstream", str(package), "--checkpoint", str(checkpoint), "--eval-images", "2",
                          "--report", str(report)]) == 0
    summary = json.loads((report / "report.json").read_text())["summary"]
    assert abs(summary["miou_delta"]) <= 0.1 and summary["pixel_agreement"] > 99
