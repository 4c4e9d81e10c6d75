"""offseg-train's defaults are each dataset's official recipe (HVision-NKU/OffSeg configs at commit 1414f6d;
SegNeXt + offset learning's for Pascal Context), printed at start and overridable."""
import pytest

from offseg.cli import train_main
from offseg.checkpoint import read_training_state
from offseg.data.datasets import LAYOUTS
from offseg.optim import lr_factor
from offseg.protocol import TestProtocol
from offseg.recipes import recipe, with_recipe
from offseg.train import TrainConfig

# (model, dataset): total batch, GPUs x per-GPU batch, max_iters, PolyLR end, checkpoint/validation interval
OFFICIAL = {
    ("offseg-t", "ade20k"): (16, 8, 2, 160_000, 160_000, 16_000),
    ("offseg-b", "ade20k"): (16, 8, 2, 160_000, 160_000, 16_000),
    ("offseg-l", "ade20k"): (16, 8, 2, 160_000, 160_000, 16_000),
    ("offseg-t", "cityscapes"): (8, 8, 1, 160_000, 160_000, 16_000),
    ("offseg-b", "cityscapes"): (8, 8, 1, 160_000, 160_000, 16_000),
    ("offseg-l", "cityscapes"): (8, 8, 1, 160_000, 160_000, 16_000),
    ("offseg-t", "coco-stuff164k"): (16, 8, 2, 160_000, 80_000, 16_000),
    ("offseg-b", "coco-stuff164k"): (16, 8, 2, 80_000, 80_000, 8_000),
    ("offseg-l", "coco-stuff164k"): (16, 8, 2, 160_000, 80_000, 16_000),
    ("offseg-t", "pascal-context-59"): (16, 8, 2, 80_000, 80_000, 8_000),
}
# dataset: crop, test resize scale, test mode, window, stride, whole-image pad divisor
OFFICIAL_TEST = {
    "ade20k": ((512, 512), (2048, 512), "slide", (512, 512), (480, 480), None),
    "cityscapes": ((1024, 1024), (2048, 1024), "slide", (1024, 1024), (768, 768), None),
    "coco-stuff164k": ((512, 512), (2048, 512), "slide", (512, 512), (480, 480), None),
    "pascal-context-59": ((480, 480), (520, 520), "slide", (480, 480), (320, 320), 32),
}


@pytest.mark.parametrize("model, dataset", OFFICIAL)
def test_recipes_are_the_official_configs(model, dataset):
    batch, gpus, per_gpu, iters, lr_end, interval = OFFICIAL[model, dataset]
    official = recipe(model, dataset)
    assert (official.batch, official.gpus, official.per_gpu_batch) == (batch, gpus, per_gpu)
    assert (official.iters, official.lr_end, official.interval, official.warmup_iters) == (iters, lr_end, interval,
                                                                                          1500)


@pytest.mark.parametrize("dataset", OFFICIAL_TEST)
def test_crops_and_test_protocols_are_the_official_ones(dataset):
    crop, scale, mode, window, stride, divisor = OFFICIAL_TEST[dataset]
    layout = LAYOUTS[dataset]
    assert layout.crop == crop
    assert TestProtocol.for_layout(layout) == TestProtocol(mode, window, stride, scale, divisor)


def test_defaults_follow_the_recipe_and_flags_override_it():
    cityscapes = with_recipe(TrainConfig(dataset="cityscapes"), 1)
    assert cityscapes.batch_size == 8 and cityscapes.iters == cityscapes.lr_end == 160_000
    assert with_recipe(TrainConfig(dataset="cityscapes"), 8).batch_size == 1
    assert with_recipe(TrainConfig(dataset="ade20k"), 2).batch_size == 8
    stuff = with_recipe(TrainConfig(dataset="coco-stuff164k"), 1)
    assert (stuff.iters, stuff.lr_end, stuff.checkpoint_interval) == (160_000, 80_000, 16_000)
    assert lr_factor(80_000, 1500, stuff.lr_end, 1.0) == 0 < lr_factor(79_999, 1500, stuff.lr_end, 1.0)
    stuff_b = with_recipe(TrainConfig(model="offseg-b", dataset="coco-stuff164k"), 1)
    assert (stuff_b.iters, stuff_b.lr_end, stuff_b.eval_interval) == (80_000, 80_000, 8_000)
    short = with_recipe(TrainConfig(dataset="coco-stuff164k", iters=1000, batch_size=4, warmup_iters=1500), 1)
    assert (short.iters, short.lr_end, short.batch_size, short.warmup_iters) == (1000, 1000, 4, 1000)
    assert with_recipe(TrainConfig(dataset="pascal-context-59"), 1).iters == 80_000


@pytest.mark.slow
def test_train_prints_the_recipe_and_decays_to_zero_at_lr_end(tmp_path, caplog):
    work = tmp_path / "w"
    with caplog.at_level("INFO", logger="offseg"):
        assert train_main(["--iters", "4", "--lr-end", "2", "--batch-size", "2", "--crop", "64", "64",
                           "--workers", "0", "--warmup-iters", "1", "--eval-images", "1", "--checkpoint-interval",
                           "1", "--keep-checkpoints", "4", "--work-dir", str(work)]) == 0
    assert "recipe for offseg-t on synthetic" in caplog.text and "batch 16 (8 GPUs x 2)" in caplog.text
    assert ("differs from the recipe: batch 2 (recipe 16), iterations 4 (recipe 160000), PolyLR end 2 (recipe "
            "160000), crop 64 64 (recipe 256 256), warm-up 1 (recipe 1500)") in caplog.text  # crop and warm-up were
    # left out of the list, as was the learning rate
    assert "final mIoU" in caplog.text and "paper-comparable" in caplog.text
    lrs = {i: read_training_state(work / f"iter_{i}.pth")["scheduler"]["_last_lr"] for i in (1, 2, 3)}
    assert all(lr > 0 for lr in lrs[1]) and all(lr == 0 for lr in lrs[2] + lrs[3])
    saved = read_training_state(work / "latest.pth")["config"]
    assert (saved["iters"], saved["lr_end"], saved["batch_size"]) == (4, 2, 2)


# mmseg's PascalContextDataset59 class names (mmseg/datasets/pascal_context.py), the label order its converter
# (tools/dataset_converters/pascal_context.py: rank among the sorted ids of the kept classes) writes
MMSEG_PASCAL_CONTEXT_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")


def test_pascal_context_classes_are_in_the_converted_label_order():
    from runtime.class_names import DATASET_CLASSES
    names = DATASET_CLASSES["pascal-context-59"]
    assert names == MMSEG_PASCAL_CONTEXT_59
    assert names.index("bag") == 1 and names.index("table") == 49  # train ids of converted labels 2 and 50


README_ROWS = {"ade20k": "ADE20K", "cityscapes": "Cityscapes", "coco-stuff164k": "COCO-Stuff-164k",
               "pascal-context-59": "Pascal Context 59"}


@pytest.mark.parametrize("dataset", README_ROWS)
def test_the_readme_recipe_table_is_the_recipes(dataset):
    from pathlib import Path

    from offseg.names import MODEL_NAMES
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {README_ROWS[dataset]} | "))
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    for model in MODEL_NAMES:
        official, ours = recipe(model, dataset), with_recipe(TrainConfig(model=model, dataset=dataset), 1)
        assert cells[1] == f"{official.batch} ({official.gpus} GPUs x {official.per_gpu_batch}) / {ours.batch_size}"
        assert f"{official.iters} / {ours.iters}" in cells[2] and cells[3] == f"{official.lr_end} / {ours.lr_end}"
    layout = LAYOUTS[dataset]
    assert cells[4] == f"{layout.crop[0]} {layout.crop[1]}" and cells[5] == " ".join(map(str, layout.test_scale))
    assert cells[6].endswith(f"slide {layout.crop[0]} {layout.crop[1]}, stride {layout.stride[0]} {layout.stride[1]}")
    assert ("padded to multiples of 32" in cells[6]) == (layout.test_size_divisor == 32)
