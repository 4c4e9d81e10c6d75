"""Training modules: metrics, dataset layouts, augmentations, the schedule, fine-tuning, resume and torchrun."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score

import reference
from offseg import build_model
from offseg.checkpoint import read_file, read_training_state
from offseg.cli import eval_main, train_main
from offseg.data.datasets import SegmentationDataset
from offseg.data.transforms import TrainTransform, random_crop, random_resize
from offseg.inference import torch_infer
from offseg.optim import lr_factor, parameter_groups
from offseg.protocol import forward_window, slide
from offseg.train import TrainConfig, init_from_checkpoint, train
from runtime.errors import OffsegError
from runtime.metrics import ConfusionMatrix


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, (3, 40, 50)).astype(np.uint8)
    truth[:, :5] = 255
    prediction = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 6, truth.shape)).astype(np.uint8)
    prediction[truth == 255] = 0
    truth[truth == 4] = 3  # class 4 absent from the ground truth but predicted: IoU 0, still counted
    confusion = ConfusionMatrix(7)  # class 6 appears nowhere: IoU NaN, left out of the mean
    for p, t in zip(prediction, truth):
        confusion.update(p, t)
    valid = truth != 255
    expected = jaccard_score(truth[valid], prediction[valid], labels=range(6), average=None, zero_division=0)
    scores = confusion.scores()
    assert np.allclose(scores.iou[:6], expected) and np.isnan(scores.iou[6])
    assert scores.miou == pytest.approx(expected.mean())
    assert np.array_equal(confusion.matrix[:6, :6], confusion_matrix(truth[valid], prediction[valid], labels=range(6)))
    assert confusion.scores().aacc == pytest.approx((truth[valid] == prediction[valid]).mean())


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _image(h=20, w=30):
    return np.full((h, w, 3), 100, np.uint8)


def test_ade20k_layout_reduces_the_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _write(root / "images" / "validation" / "a.jpg", _image())
    _write(root / "annotations" / "validation" / "a.png", np.array([[0, 1, 150]] * 20, np.uint8).repeat(10, 1))
    dataset = SegmentationDataset("ade20k", tmp_path, "val")
    image, labels = dataset.load(0)
    assert dataset.num_classes == 150 and image.shape == (20, 30, 3)
    assert sorted(np.unique(labels)) == [0, 149, 255]


def test_palette_png_labels_are_read_as_their_indices_and_colour_labels_are_one_sentence(tmp_path):
    """Palette PNGs (Pascal VOC's style, many annotation tools' export) hold indices; OpenCV expands them to
    colours, which was refused as 'not a single-channel label image'. mmseg reads the indices with Pillow."""
    from PIL import Image

    root = tmp_path / "ADEChallengeData2016"
    _write(root / "images" / "validation" / "a.jpg", _image())
    indices = np.array([[0, 1, 150, 255]] * 20, np.uint8).repeat([8, 8, 7, 7], 1)
    picture = Image.fromarray(indices, "P")
    picture.putpalette([value for index in range(256) for value in (index, 255 - index, 7 * index % 256)])
    (root / "annotations" / "validation").mkdir(parents=True)
    picture.save(root / "annotations" / "validation" / "a.png")
    assert cv2.imread(str(root / "annotations" / "validation" / "a.png"), cv2.IMREAD_UNCHANGED).shape == (20, 30, 3)
    labels = SegmentationDataset("ade20k", tmp_path, "val").load(0)[1]
    assert np.array_equal(labels, np.array([[255, 0, 149, 255]] * 20, np.uint8).repeat([8, 8, 7, 7], 1))
    _write(root / "annotations" / "validation" / "a.png", np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(OffsegError, match=r"a.png holds 3 channels: a label image holds one class index per pixel "
                                          r"\(a gray or palette PNG\), not a colour picture of the classes"):
        SegmentationDataset("ade20k", tmp_path, "val").load(0)


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    _write(tmp_path / "leftImg8bit" / "val" / "ulm" / "ulm_1_leftImg8bit.png", _image())
    _write(tmp_path / "gtFine" / "val" / "ulm" / "ulm_1_gtFine_labelIds.png",
           np.array([[7, 26, 0]] * 20, np.uint8).repeat(10, 1))
    labels = SegmentationDataset("cityscapes", tmp_path, "val").load(0)[1]
    assert sorted(np.unique(labels)) == [0, 13, 255]  # road, car, ignored


def test_coco_stuff_pascal_context_and_folder_layouts(tmp_path):
    coco = tmp_path / "coco"
    _write(coco / "images" / "train2017" / "1.jpg", _image())
    _write(coco / "annotations" / "train2017" / "1_labelTrainIds.png", np.full((20, 30), 170, np.uint8))
    assert SegmentationDataset("coco-stuff164k", coco, "train").num_classes == 171
    context = tmp_path / "context"
    _write(context / "JPEGImages" / "x.jpg", _image())
    _write(context / "SegmentationClassContext" / "x.png", np.full((20, 30), 1, np.uint8))
    (context / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (context / "ImageSets" / "SegmentationContext" / "val.txt").write_text("x\n")
    assert SegmentationDataset("pascal-context-59", context, "val").load(0)[1].max() == 0
    folder = tmp_path / "mine"
    _write(folder / "images" / "train" / "a.png", _image())
    _write(folder / "labels" / "train" / "a.png", np.ones((20, 30), np.uint8))
    (folder / "classes.txt").write_text("floor\nobstacle\n")
    assert SegmentationDataset("folder", folder, "train").classes == ("floor", "obstacle")


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "ADE20K val images not found"),
    (lambda root: _write(root / "images" / "validation" / "a.jpg", _image())
     or (root / "annotations" / "validation").mkdir(parents=True),
     "1 image of 1 has no label file: images/validation/a.jpg needs annotations/validation/a.png"),
])
def test_dataset_mistakes_are_explained(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(OffsegError, match=message):
        SegmentationDataset("ade20k", tmp_path, "val")
    with pytest.raises(OffsegError, match="no split"):
        SegmentationDataset("ade20k", tmp_path, "test")


@pytest.mark.parametrize("files, message", [
    (["images/a.png", "labels/a.png"], "images/val not found; a folder dataset holds its images in ROOT/images/SPLIT/, "
     "one label PNG per image, of the same name, in ROOT/labels/SPLIT/ and its class names, one per line, in "
     "ROOT/classes.txt: move the files of TMP/images into TMP/images/val"),
    (["images/val/a.png", "labels/a.png"], "move the files of TMP/labels into TMP/labels/val"),
    (["a.png"], "images/val not found; a folder dataset holds .*: is --data-root the dataset's root folder"),
    (["images/val/a.png", "images/val/b.png", "images/val/c.png", "labels/val/b.png"],
     "2 images of 3 have no label file: images/val/a.png needs labels/val/a.png"),
])
def test_folder_dataset_mistakes_say_the_layout(tmp_path, files, message):
    for name in files:
        _write(tmp_path / name, _image() if "labels" not in name else np.ones((20, 30), np.uint8))
    with pytest.raises(OffsegError) as error:
        SegmentationDataset("folder", tmp_path, "val")
    assert re.search(message.replace("TMP", str(tmp_path)), str(error.value)), str(error.value)


@pytest.mark.parametrize("content, message", [
    (b"road\ncar\n\nperson\n", "classes.txt line 3 is blank: line N names label N - 1, so a blank line between "
                                 "names would move every later name to another label; name that label, or remove the "
                                 "line"),
    (b"road\nv\xe9hicule\n", r"classes.txt is not UTF-8 text \(byte 6 is 0xe9\): save it as UTF-8"),
    (b"road\ncar\nroad\n", "classes.txt names 'road' on lines 1 and 3: each label needs a name of its own"),
    (b"\n\n", "classes.txt names no class: write one class name per line, in label order"),
])
def test_a_classes_file_that_would_misname_labels_is_one_sentence(tmp_path, content, message):
    """A blank line between names shifted every later name to another label without a word; a file in another
    encoding was a UnicodeDecodeError traceback."""
    _write(tmp_path / "images" / "val" / "a.png", _image())
    _write(tmp_path / "labels" / "val" / "a.png", np.ones((20, 30), np.uint8))
    (tmp_path / "classes.txt").write_bytes(content)
    with pytest.raises(OffsegError, match=message):
        SegmentationDataset("folder", tmp_path, "val")


def test_a_classes_file_may_start_with_a_byte_order_mark_and_end_with_blank_lines(tmp_path):
    _write(tmp_path / "images" / "val" / "a.png", _image())
    _write(tmp_path / "labels" / "val" / "a.png", np.ones((20, 30), np.uint8))
    (tmp_path / "classes.txt").write_bytes("\ufeffroad\r\nvéhicule\r\n\r\n\r\n".encode())
    assert SegmentationDataset("folder", tmp_path, "val").classes == ("road", "véhicule")


def test_an_image_turned_by_its_exif_orientation_names_the_tag_when_its_labels_do_not_fit(tmp_path):
    """A phone photo stored landscape with an orientation tag: OpenCV decodes it upright (portrait), as mmseg does;
    labels drawn on the stored pixels then differ in shape, which the sentence now explains."""
    from PIL import Image

    _write(tmp_path / "labels" / "val" / "a.png", np.ones((20, 30), np.uint8))
    (tmp_path / "images" / "val").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to view
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "images" / "val" / "a.jpg", exif=exif)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(OffsegError, match=r"a.png is \(20, 30\), its image .*a.jpg is \(30, 20\) once turned upright "
                                          r"by its EXIF orientation tag, as OpenCV \(and mmseg\) decode it, while the "
                                          r"labels match its stored pixels: turn the label image the same way, or "
                                          r"remove the tag from the image$"):
        SegmentationDataset("folder", tmp_path, "val").load(0)
    _write(tmp_path / "labels" / "val" / "a.png", np.ones((21, 30), np.uint8))  # another mismatch: no word of EXIF
    with pytest.raises(OffsegError, match=r"a.png is \(21, 30\), its image .*a.jpg is \(30, 20\)$"):
        SegmentationDataset("folder", tmp_path, "val").load(0)


def test_augmentations_follow_mmseg_semantics():
    rng = np.random.default_rng(0)
    image, labels = np.zeros((100, 300, 3), np.uint8), np.zeros((100, 300), np.uint8)
    labels[:, 150:] = 1
    resized = random_resize(np.random.default_rng(1), image, labels, (2048, 512), (1.0, 1.0))[1]
    assert resized.shape == (512 * 100 // 100, 1536)  # short edge to 512 (long edge 1536 < 2048)
    crop = random_crop(rng, image, labels, (50, 60))[1]
    assert crop.shape == (50, 60) and len(np.unique(crop)) == 2  # the 0.75 category cap prefers mixed crops
    out_image, out_labels = TrainTransform(crop=(256, 256), scale=(64, 64))(image, labels, rng)
    assert out_image.shape[:2] == out_labels.shape and out_labels.shape[0] <= 64  # padded later, in the batch


def test_schedule_and_parameter_groups():
    assert lr_factor(0, 1500, 160_000, 1.0) == pytest.approx(1e-6)
    assert lr_factor(1500, 1500, 160_000, 1.0) == pytest.approx(1.0)
    assert lr_factor(160_000, 1500, 160_000, 1.0) == 0.0
    groups = {g["name"]: g for g in parameter_groups(build_model("offseg-t", 9), 6e-5, 0.01)}
    assert groups["head"]["lr"] == pytest.approx(6e-4) and groups["default"]["lr"] == pytest.approx(6e-5)
    assert groups["norm"]["weight_decay"] == 0 and groups["head"]["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in groups.values()) == len(list(build_model("offseg-t", 9).parameters()))


def test_fine_tuning_an_official_checkpoint_to_new_classes(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"meta": {}, "state_dict": reference.official_state_dict("offseg-t")}, path)
    model = build_model("offseg-t", 9)
    reset = init_from_checkpoint(model, str(path))
    assert reset == ["head.offset_learning.class_embed", "head.offset_learning.mask_norm.weight",
                     "head.offset_learning.mask_norm.bias"]
    official = reference.official_state_dict("offseg-t")
    assert torch.equal(model.state_dict()["head.align.conv.weight"], official["decode_head.align.conv.weight"])


def test_sliding_window_covers_the_image_and_equals_whole_for_one_window():
    torch.manual_seed(0)
    infer = torch_infer(build_model("offseg-t", 5).eval())
    x = torch.randn(1, 3, 96, 160).numpy()
    whole = forward_window(infer, x)
    assert np.allclose(slide(x, infer, (96, 160), (64, 64)), whole, atol=1e-5)
    windows = slide(x, infer, (64, 64), (48, 48))
    assert windows.shape == whole.shape and np.isfinite(windows).all()


TINY = dict(dataset="synthetic", batch_size=2, crop=(64, 64), scale=(96, 64), warmup_iters=1, lr=1e-3,
            log_interval=1, workers=0, synthetic_size=(64, 96), synthetic_length=20, eval_images=1, deterministic=True)


@pytest.mark.slow
def test_a_fresh_run_in_a_work_dir_that_holds_a_run_is_refused_before_any_work(tmp_path, capsys):
    """Without --resume, a second run in the same --work-dir replaced the first run's latest.pth at its first
    checkpoint: a --resume forgotten after a stop cost the whole run."""
    work = tmp_path / "w"
    tiny = ["--batch-size", "2", "--crop", "64", "64", "--workers", "0", "--warmup-iters", "1", "--eval-images", "1",
            "--work-dir", str(work)]
    assert train_main(["--iters", "1", *tiny]) == 0
    before = (work / "latest.pth").read_bytes()
    capsys.readouterr()
    assert train_main(["--iters", "2", *tiny]) == 2
    assert capsys.readouterr().err == (
        f"error: --work-dir {work} already holds a training run ({work / 'latest.pth'}: offseg-t at iteration 1 of "
        "1), which this fresh run would overwrite: add --resume to continue it, or give another --work-dir to start "
        "afresh\n")
    assert (work / "latest.pth").read_bytes() == before
    assert train_main(["--iters", "2", "--resume", *tiny]) == 0
    assert read_training_state(work / "latest.pth")["iteration"] == 2


def test_resume_continues_exactly(tmp_path):
    straight = train(TrainConfig(iters=4, checkpoint_interval=2, keep_checkpoints=2, work_dir=str(tmp_path / "a"),
                                 **TINY), progress=False)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "iter_2.pth", tmp_path / "b" / "latest.pth")  # as if stopped after iteration 2
    resumed = train(TrainConfig(iters=4, checkpoint_interval=2, work_dir=str(tmp_path / "b"), resume=True, **TINY),
                    progress=False)
    a, b = (read_training_state(p) for p in (straight, resumed))
    assert b["iteration"] == 4
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    assert (tmp_path / "b" / "tensorboard").is_dir() and (tmp_path / "b" / "scalars.jsonl").is_file()


@pytest.mark.slow
def test_torchrun_two_processes_with_gloo(tmp_path):
    work = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train_command = str(Path(sys.executable).with_name("offseg-train"))  # the console script, as a user runs it
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                             "29517", "--no-python", train_command, "--iters", "2", "--batch-size", "1", "--crop", "64",
                             "64", "--workers", "0", "--warmup-iters", "1", "--eval-interval", "100",
                             "--work-dir", str(work)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_training_state(work / "latest.pth")["iteration"] == 2


@pytest.mark.slow
def test_train_and_eval_commands(tmp_path, capsys, caplog):
    work = tmp_path / "w"
    with caplog.at_level("INFO", logger="offseg"):
        assert train_main(["--iters", "2", "--batch-size", "2", "--crop", "64", "64", "--workers", "0",
                           "--warmup-iters", "1", "--work-dir", str(work), "--accumulate", "2",
                           "--eval-images", "2"]) == 0
    assert "effective batch 4 = 2 per step x 1 process(es) x 2 accumulated step(s), FP32" in caplog.text
    assert eval_main(["--checkpoint", str(work / "latest.pth"), "--eval-images", "2", "--json",
                      str(tmp_path / "s.json")]) == 0
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "s.json").is_file()
    assert train_main(["--dataset", "ade20k", "--data-root", str(tmp_path / "nothing"), "--iters", "1"]) == 2
    assert "ade20k root not found" in capsys.readouterr().err


@pytest.mark.slow
def test_run_keeps_latest_best_and_n_checkpoints_and_logs_plain_progress(tmp_path, capsys):
    work = tmp_path / "keep"
    train(TrainConfig(iters=4, checkpoint_interval=1, keep_checkpoints=2, eval_interval=2, work_dir=str(work),
                      **TINY), progress=True)
    assert sorted(p.name for p in work.glob("*.pth")) == ["best.pth", "iter_3.pth", "iter_4.pth", "latest.pth"]
    best = read_file(work / "best.pth")
    assert best["meta"]["iteration"] in (2, 4) and 0 <= best["meta"]["miou"] <= 1 and "optimizer" not in best
    assert best["classes"] and best["num_classes"] == len(best["classes"])
    log = capsys.readouterr().err
    assert "\r" not in log and "training offseg-t:" in log and "expected duration" in log  # stderr is not a TTY
    final = [line for line in log.splitlines() if line.startswith("training offseg-t: 4/4 it in ")]
    assert final and re.search(r"loss [\d.]+, data \d+ ms, step \d+ ms$", final[0]), log
    rows = [json.loads(line) for line in (work / "scalars.jsonl").read_text().splitlines() if '"loss"' in line]
    assert rows and all(row["step_seconds"] > 0 and row["data_seconds"] >= 0 for row in rows)


def test_the_step_checks_the_labels_it_is_given():
    """The label range is read from the loader's host tensor (on a CUDA tensor the read would stall the GPU every
    step); a label above the classes stops training with a sentence."""
    from offseg.train import train_step
    model = torch.nn.Conv2d(3, 3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    images, labels = torch.zeros(1, 3, 8, 8), torch.full((1, 8, 8), 5)
    with pytest.raises(OffsegError, match="training labels go up to 5 but the model has 3 classes"):
        train_step(model, [(images, labels)], optimizer, scaler, torch.device("cpu"), False)
    labels[:] = 2
    assert train_step(model, [(images, labels)], optimizer, scaler, torch.device("cpu"), False) > 0


def test_pruning_keeps_the_newest_iteration_files_only(tmp_path):
    from offseg.run_files import prune_checkpoints
    for n in (50, 100, 150, 1000):
        (tmp_path / f"iter_{n}.pth").write_bytes(b"x")
    (tmp_path / "latest.pth").write_bytes(b"x")
    (tmp_path / "iter_notes.pth").write_bytes(b"x")
    removed = prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["iter_100.pth", "iter_50.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1000.pth", "iter_150.pth", "iter_notes.pth",
                                                          "latest.pth"]


def test_best_checkpoint_only_improves_and_survives_a_restart(tmp_path):
    from offseg.run_files import BestCheckpoint
    model = build_model("offseg-t", 3)
    best = BestCheckpoint(tmp_path / "best.pth", "offseg-t", ("a", "b", "c"))
    assert best.offer(model, 0.30, 10) and not best.offer(model, 0.20, 20) and not best.offer(model, float("nan"), 30)
    again = BestCheckpoint(tmp_path / "best.pth", "offseg-t", ("a", "b", "c"))
    assert again.miou == pytest.approx(0.30) and not again.offer(model, 0.25, 40) and again.offer(model, 0.5, 50)
    (tmp_path / "foreign.pth").write_bytes(b"not a checkpoint")
    assert BestCheckpoint(tmp_path / "foreign.pth", "offseg-t", ("a",)).miou == float("-inf")


def _two_iterations(work: Path, **variant) -> tuple[list[float], dict]:
    latest = train(TrainConfig(iters=2, checkpoint_interval=2, work_dir=str(work), **variant, **TINY), progress=False)
    lines = [json.loads(line) for line in (work / "scalars.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line], read_training_state(latest)["state_dict"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[list[float], dict]:
    return _two_iterations(tmp_path_factory.mktemp("default"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{"compile": "aot_eager"}, {"carafe": "unfold"}], ids=["compiled", "unfold"])
def test_a_variant_run_trains_as_the_default_run_and_saves_the_same_checkpoint(tmp_path, caplog, variant,
                                                                               default_run):
    """aot_eager traces the whole step through torch.compile (dynamo, AOTAutograd) without generating kernels, and
    the unfold form computes CARAFE with other kernels: the wiring is what this checks; inductor's and the GPU
    forms' speed is measured by benchmarks/gpu.py."""
    default_losses, default_state = default_run
    with caplog.at_level(logging.INFO, logger="offseg"):
        losses, state = _two_iterations(tmp_path / "variant", **variant)
    # the first step's loss comes before any update: the same forward; after it, AdamW's first steps move each
    # weight by about lr along the gradient's sign, which rounding flips where a gradient is near 0
    assert len(default_losses) == 2 and abs(default_losses[0] - losses[0]) < 1e-5
    assert abs(default_losses[1] - losses[1]) < 1e-2
    assert state.keys() == default_state.keys(), "the variant run names its tensors differently"
    build_model("offseg-t", 9).load_state_dict(state)
    if "carafe" in variant:
        assert "CARAFE unfold form" in caplog.text


def test_train_refuses_a_compile_backend_or_carafe_form_it_cannot_run(tmp_path, capsys):
    assert train_main(["--iters", "1", "--compile", "no-such-backend", "--work-dir", str(tmp_path / "x")]) == 2
    assert "--compile no-such-backend: torch" in capsys.readouterr().err
    assert train_main(["--iters", "1", "--carafe", "fused", "--work-dir", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.startswith("error: --carafe fused runs a Triton kernel on a CUDA GPU")
    assert not (tmp_path / "y" / "latest.pth").exists()


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "--lr must be above 0, got 0"),
    (["--lr", "-1"], "--lr must be above 0, got -1"),
    (["--crop", "0", "512"], "--crop must be at least 32x32"),
    (["--workers", "-1"], "--workers must be at least 0, got -1"),
    (["--warmup-iters", "-5"], "--warmup-iters must be at least 0, got -5"),
    (["--seed", "-1"], "--seed must be from 0 to 2**32 - 1, got -1"),
    (["--iters", "0"], "--iters must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--data-root", "DATA"], "is given but --dataset is synthetic (built-in scenes, no files): add --dataset"),
    (["--dataset", "cityscapes"], "--data-root is required for cityscapes"),
])
def test_bad_training_settings_are_one_sentence_before_anything_starts(tmp_path, capsys, argv, message):
    """They used to start a run (--lr 0: 160,000 iterations), or fail in it with a traceback (--lr -1, --crop 0 512,
    --workers -1, --seed -1)."""
    argv = [str(tmp_path) if a == "DATA" else a for a in argv]
    assert train_main(["--work-dir", str(tmp_path / "w"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "w").exists()


def test_a_class_count_mismatch_names_the_file_that_counts(tmp_path, capsys):
    from offseg import save_checkpoint
    _write(tmp_path / "images" / "val" / "a.png", _image())
    _write(tmp_path / "labels" / "val" / "a.png", np.ones((20, 30), np.uint8))
    (tmp_path / "classes.txt").write_text("floor\nobstacle\n")
    checkpoint = save_checkpoint(build_model("offseg-t", 9), tmp_path / "nine.pth", "offseg-t")
    assert eval_main(["--checkpoint", str(checkpoint), "--dataset", "folder", "--data-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {checkpoint} predicts 9 classes, but {tmp_path / 'classes.txt'} names "
                                       "2 classes\n")


def test_the_model_to_train_follows_the_checkpoint_or_the_resumed_run(tmp_path):
    """offseg-train --checkpoint B.pth (fine-tuning) without --model built offseg-t and failed to load offseg-b's
    weights, saying 'pass --model offseg-b, or leave --model out' to a user who had left it out; --resume of an
    offseg-b run likewise."""
    from offseg import save_checkpoint
    from offseg.cli import _model_to_train
    from offseg.train_options import train_parser
    base = save_checkpoint(build_model("offseg-b", 9), tmp_path / "b.pth", "offseg-b")
    work = tmp_path / "run"
    work.mkdir()
    save_checkpoint(build_model("offseg-l", 9), work / "latest.pth", "offseg-l")  # the run --resume continues

    def model(*argv):
        return _model_to_train(train_parser().parse_args(["--work-dir", str(work), *argv]))

    assert model() == "offseg-t" and model("--model", "offseg-l") == "offseg-l"
    assert model("--checkpoint", str(base)) == "offseg-b"
    assert model("--resume") == model("--resume", "--checkpoint", str(base)) == "offseg-l"
    assert model("--resume", "--model", "offseg-t") == "offseg-t"  # said: a mismatch is load_state's sentence
