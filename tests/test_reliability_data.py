"""Calibration, validation and evaluation under careless use: stale calibration is never reused, a gate that measured
nothing fails, bad labels are named, bad paths are refused before minutes of work."""
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy

import cv2
import numpy as np
import pytest
import torch

from calibration.cli import validate_main
from calibration.sources import data_key
from export.cli import main as export_main
from exported import export_small_model
from offseg import build_model, save_checkpoint
from offseg.cli import eval_main, train_main
from offseg.data.datasets import SegmentationDataset


def write_images(folder, seed, count=3, size=(48, 64)):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return folder


def test_the_calibration_key_follows_the_images_not_the_folder_name(tmp_path):
    folder = write_images(tmp_path / "calib", seed=0)
    key = data_key(folder, 3)
    assert data_key(folder, 3) == key and data_key(folder, 2) != key
    time.sleep(0.01)
    write_images(folder, seed=1)  # every image replaced, same names
    assert data_key(folder, 3) != key
    replaced = data_key(folder, 3)
    os.remove(folder / "2.png")
    assert data_key(folder, 3) != replaced


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp.joinpath("empty").mkdir() or tmp / "empty", "no images"),
    (lambda tmp: tmp.joinpath("iphone").mkdir() or tmp.joinpath("iphone", "IMG_1.HEIC").write_bytes(b"x") and
     tmp / "iphone", "under IPHONE; it holds 1 photo (.heic, e.g. IMG_1.HEIC) in a format OpenCV does not read"),
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: tmp.joinpath("notes.txt").write_text("x") and tmp / "notes.txt", "neither a folder of images nor"),
])
def test_bad_calibration_data_fails_before_the_export(tmp_path, monkeypatch, capsys, make, message):
    import export.cli
    monkeypatch.setattr(export.cli, "_export_torch", lambda *a: pytest.fail("exported before checking the data"))
    data = make(tmp_path)
    assert export_main(["--int8", "--calib-data", str(data), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert message.replace("IPHONE", str(tmp_path / "iphone")) in err and "Traceback" not in err


def test_an_unwritable_output_folder_fails_before_the_export(monkeypatch, capsys):
    import export.cli
    monkeypatch.setattr(export.cli, "_export_torch", lambda *a: pytest.fail("exported before checking the folder"))
    if os.geteuid() != 0:
        pytest.skip("/sys is read-only only for root here")
    assert export_main(["--output", "/sys/m.onnx"]) == 2
    assert "--output /sys/m.onnx: cannot write in /sys" in capsys.readouterr().err


@pytest.mark.slow
def test_replacing_every_calibration_image_recalibrates(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model("offseg-t", 5).eval(), tmp_path / "t.pth", "offseg-t")
    calib = write_images(tmp_path / "calib", seed=0, count=2)
    assert export_main(["--checkpoint", str(checkpoint), "--input-size", "64", "64", "--output",
                        str(tmp_path / "m.onnx"), "--no-check"]) == 0
    argv = ["--onnx", str(tmp_path / "m.onnx"), "--int8", "--calib-data", str(calib), "--calib-images", "2"]
    assert export_main(argv) == 0  # the INT8 step of an export, without tracing the model again each time
    capsys.readouterr()
    assert export_main(argv) == 0
    assert "reusing" in capsys.readouterr().out  # same images: the INT8 graph is reused
    time.sleep(0.01)
    write_images(calib, seed=1, count=2)
    assert export_main(argv) == 0
    out = capsys.readouterr().out
    assert "reusing" not in out and "calibrated on 2 images" in out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(build_model("offseg-t", 9).eval(), folder / "t.pth", "offseg-t")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return export_small_model(tmp_path_factory.mktemp("model"), 9, (64, 64))


def labelled_folder(root, labels_value, count=2, classes=("a", "b", "c"), rest=0):
    """The ``folder`` dataset layout: images/ and labels/ per split (top half ``labels_value``, bottom half
    ``rest``), classes.txt."""
    for split in ("val", "train"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            cv2.imwrite(str(root / "images" / split / f"{index}.png"), np.full((64, 64, 3), 60 * index, np.uint8))
            labels = np.full((64, 64), rest, np.uint8)
            labels[:32] = labels_value
            cv2.imwrite(str(root / "labels" / split / f"{index}.png"), labels)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_a_score_of_nothing_is_an_error_not_nan():
    from runtime.errors import OffsegError
    from runtime.metrics import ConfusionMatrix
    confusion = ConfusionMatrix(3)
    confusion.update(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8))
    with pytest.raises(OffsegError, match="nothing to score"):
        confusion.scores()


@pytest.mark.parametrize("argv, message", [(["--eval-images", "0"], "--eval-images must be at least 1, got 0"),
                                           (["--dataset", "folder", "--data-root", "ALL255"], "nothing to score")])
def test_eval_that_measures_nothing_fails_with_a_sentence(checkpoint, tmp_path, capsys, argv, message):
    root = labelled_folder(tmp_path / "d", 255, classes=[str(i) for i in range(9)], rest=255)
    argv = [str(root) if a == "ALL255" else a for a in argv]
    assert eval_main(["--checkpoint", str(checkpoint), *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "nan" not in captured.out.lower()


def test_eval_counts_labels_above_the_class_count_and_names_the_file_once(checkpoint, tmp_path, capsys, caplog):
    root = labelled_folder(tmp_path / "d", 12, classes=[str(i) for i in range(9)])
    assert eval_main(["--checkpoint", str(checkpoint), "--dataset", "folder", "--data-root", str(root)]) == 0
    warnings = [r.getMessage() for r in caplog.records if "label values 12" in r.getMessage()]
    assert len(warnings) == 1 and any(str(root / "labels" / "val" / f"{i}.png") in warnings[0] for i in range(2))
    assert f"{2 * 32 * 64} pixels with labels above the class count were left out" in capsys.readouterr().out


def test_a_dataset_counts_out_of_range_labels_from_many_threads_and_pickles(tmp_path, caplog):
    root = labelled_folder(tmp_path / "d", 12, count=4, classes=[str(i) for i in range(9)])
    dataset = SegmentationDataset("folder", root, "val")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(dataset.load, list(range(4)) * 8))
    assert dataset.out_of_range_pixels == 32 * 32 * 64
    assert sum("label values 12" in r.getMessage() for r in caplog.records) == 1
    copy = deepcopy(dataset)  # through __getstate__, as pickling to a DataLoader worker started by spawn
    assert copy.load(0)[1].max() == 255 and copy.out_of_range_pixels == dataset.out_of_range_pixels + 32 * 64


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_training_on_labels_above_the_class_count_names_the_file(tmp_path, capsys, workers):
    root = labelled_folder(tmp_path / "d", 175)
    code = train_main(["--dataset", "folder", "--data-root", str(root), "--iters", "1", "--batch-size", "1",
                       "--crop", "32", "32", "--workers", workers, "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(error) == 1 and "Traceback" not in err, err[-2000:]
    assert "label values 175, outside the 3 classes of folder" in error[0] and "/labels/train/" in error[0]


@pytest.mark.slow
def test_an_error_raised_in_a_data_worker_ends_the_command(tmp_path):
    """As a process: the loader's workers ignore SIGTERM, and an iterator kept alive by the error's traceback used
    to leave them to the interpreter's exit, which waited for them forever."""
    root = labelled_folder(tmp_path / "d", 175)
    command = [sys.executable, "-c", "import sys; from offseg.cli import train_main; sys.exit(train_main())",
               "--dataset", "folder", "--data-root", str(root),
               "--iters", "1", "--batch-size", "1", "--crop", "32", "32", "--workers", "1",
               "--work-dir", str(tmp_path / "w")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "label values 175" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_a_validation_gate_that_measured_nothing_fails(onnx_model, tmp_path, capsys):
    checkpoint, onnx_path = onnx_model
    root = labelled_folder(tmp_path / "d", 255, classes=[str(i) for i in range(9)], rest=255)
    common = ["--engine", str(onnx_path), "--checkpoint", str(checkpoint), "--report", str(tmp_path / "r")]
    assert validate_main([*common, "--eval-images", "0"]) == 2
    assert "--eval-images must be at least 1" in capsys.readouterr().err
    assert validate_main([*common, "--data-root", str(root)]) == 2  # --dataset left at synthetic
    assert "is given but --dataset is synthetic" in capsys.readouterr().err
    assert validate_main([*common, "--dataset", "folder", "--data-root", str(root)]) == 2
    assert "nothing to score" in capsys.readouterr().err
