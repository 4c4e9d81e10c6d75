"""Segmentation datasets in the standard mmseg folder layouts, a generic folder format and the synthetic scenes.

Every dataset yields ``(uint8 BGR image (H, W, 3), uint8 labels (H, W))`` with 255 = ignore, already in train ids.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import OffsegError
from runtime.image_header import PNG_PALETTE, png_colour_type
from runtime.metrics import IGNORE_INDEX
from runtime.limits import check_image_file
from runtime.progress import counted
from runtime.class_names import DATASET_CLASSES
from runtime.sources import IMAGE_SUFFIXES, read_image

from . import synthetic

log = logging.getLogger(__name__)

# Cityscapes label ids -> the 19 train ids (everything else ignored), as cityscapesscripts defines them.
CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                          25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@dataclass(frozen=True)
class Layout:
    """Where a dataset keeps its files and how its labels become train ids."""

    name: str
    num_classes: int
    splits: dict[str, str]  # our split name -> folder name
    reduce_zero_label: bool  # label 0 = "other" -> ignore, others shift down by one (ADE20K, Pascal Context)
    train_scale: tuple[int, int]  # mmseg RandomResize scale (long, short) of the official configs
    test_mode: str  # the official test config's inference: whole or slide
    crop: tuple[int, int]  # official crop size (H, W); also the sliding window
    stride: tuple[int, int]
    test_scale: tuple[int, int] | None  # test pipeline's Resize(scale, keep_ratio=True); None: original size
    test_size_divisor: int | None = None  # data preprocessor's test_cfg size_divisor: whole image padded first


LAYOUTS = {
    "ade20k": Layout("ade20k", 150, {"train": "training", "val": "validation"}, True, (2048, 512), "slide",
                     (512, 512), (480, 480), (2048, 512)),
    "cityscapes": Layout("cityscapes", 19, {"train": "train", "val": "val", "test": "test"}, False, (2048, 1024),
                         "slide", (1024, 1024), (768, 768), (2048, 1024)),
    "coco-stuff164k": Layout("coco-stuff164k", 171, {"train": "train2017", "val": "val2017"}, False, (2048, 512),
                             "slide", (512, 512), (480, 480), (2048, 512)),
    # no OffSeg config: SegNeXt + offset learning's, whose test_cfg pads the whole image to multiples of 32
    "pascal-context-59": Layout("pascal-context-59", 59, {"train": "train", "val": "val"}, True, (520, 520), "slide",
                                (480, 480), (320, 320), (520, 520), 32),
    # a user's own folder: ADE20K's pipeline; the synthetic scenes are evaluated at their own size
    "folder": Layout("folder", 0, {}, False, (2048, 512), "whole", (512, 512), (480, 480), (2048, 512)),
    "synthetic": Layout("synthetic", len(synthetic.CLASSES), {"train": "train", "val": "val"}, False, (512, 256),
                        "whole", (256, 256), (224, 224), None),
}


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise OffsegError(f"{what} not found: {path} (is --data-root the dataset's root folder?)")
    return path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _pairs_by_stem(images: list[Path], label_for: Callable[[Path], Path], root: Path) -> list[tuple[Path, Path]]:
    pairs = [(image, label_for(image)) for image in images]
    missing = [(image, label) for image, label in pairs if not label.is_file()]
    if missing:
        image, label = (path.relative_to(root) for path in missing[0])
        raise OffsegError(f"{counted(len(missing), 'image')} of {len(pairs)} {'has' if len(missing) == 1 else 'have'} "
                          f"no label file: {image} needs {label}")
    if not pairs:
        raise OffsegError(f"no images found under {root}")
    return pairs


def ade20k_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    folder = LAYOUTS["ade20k"].splits[split]
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    images = _require_dir(base / "images" / folder, f"ADE20K {split} images")
    labels = _require_dir(base / "annotations" / folder, f"ADE20K {split} annotations")
    return _pairs_by_stem(_images(images), lambda p: labels / p.relative_to(images).with_suffix(".png"), base)


def cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = _require_dir(root / "leftImg8bit" / split, f"Cityscapes {split} images (leftImg8bit)")
    labels = _require_dir(root / "gtFine" / split, f"Cityscapes {split} labels (gtFine)")

    def label_for(image: Path) -> Path:
        stem = image.relative_to(images).parent / image.name.replace("_leftImg8bit.png", "")
        train_ids = labels / f"{stem}_gtFine_labelTrainIds.png"
        return train_ids if train_ids.is_file() else labels / f"{stem}_gtFine_labelIds.png"

    return _pairs_by_stem([p for p in _images(images) if p.name.endswith("_leftImg8bit.png")], label_for, root)


def coco_stuff_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    folder = LAYOUTS["coco-stuff164k"].splits[split]
    images = _require_dir(root / "images" / folder, f"COCO-Stuff {split} images")
    labels = _require_dir(root / "annotations" / folder, f"COCO-Stuff {split} annotations")
    return _pairs_by_stem(_images(images), lambda p: labels / f"{p.stem}_labelTrainIds.png", root)


def pascal_context_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    base = root / "VOCdevkit" / "VOC2010" if (root / "VOCdevkit" / "VOC2010").is_dir() else root
    split_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    if not split_file.is_file():
        raise OffsegError(f"Pascal Context split file not found: {split_file}")
    labels = _require_dir(base / "SegmentationClassContext", "Pascal Context labels (SegmentationClassContext)")
    images = _require_dir(base / "JPEGImages", "Pascal Context images (JPEGImages)")
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    return _pairs_by_stem([images / f"{n}.jpg" for n in names], lambda p: labels / f"{p.stem}.png", base)


FOLDER_LAYOUT = ("a folder dataset holds its images in ROOT/images/SPLIT/, one label PNG per image, of the same name, "
                 "in ROOT/labels/SPLIT/ and its class names, one per line, in ROOT/classes.txt")


def folder_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images, labels = root / "images" / split, root / "labels" / split
    for folder in (images, labels):
        if folder.is_dir():
            continue
        flat = folder.parent.is_dir() and any(p.is_file() for p in folder.parent.iterdir())
        advice = f"move the files of {folder.parent} into {folder}" if flat else \
            "is --data-root the dataset's root folder?"
        raise OffsegError(f"{folder} not found; {FOLDER_LAYOUT}: {advice}")
    return _pairs_by_stem(_images(images), lambda p: labels / p.relative_to(images).with_suffix(".png"), root)


def folder_classes(root: Path) -> tuple[str, ...]:
    """The class names of a folder dataset's classes.txt, line N naming label N - 1 (UTF-8, a byte-order mark
    allowed); OffsegError for a file that names none, has a blank line between names or names a class twice."""
    path = root / "classes.txt"
    if not path.is_file():
        raise OffsegError(f"a folder dataset needs {path}: one class name per line, in label order")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError as error:
        raise OffsegError(f"{path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}): save "
                          "it as UTF-8") from None
    except OSError as error:
        raise OffsegError(f"cannot read {path}: {error.strerror or error}") from None
    while names and not names[-1]:
        names.pop()
    if not names:
        raise OffsegError(f"{path} names no class: write one class name per line, in label order")
    if "" in names:
        raise OffsegError(f"{path} line {names.index('') + 1} is blank: line N names label N - 1, so a blank line "
                          "between names would move every later name to another label; name that label, or remove "
                          "the line")
    first_line = {}
    for number, name in enumerate(names, 1):
        if name in first_line:
            raise OffsegError(f"{path} names {name!r} on lines {first_line[name]} and {number}: each label needs a "
                              "name of its own")
        first_line[name] = number
    return tuple(names)


PAIRS = {"ade20k": ade20k_pairs, "cityscapes": cityscapes_pairs, "coco-stuff164k": coco_stuff_pairs,
         "pascal-context-59": pascal_context_pairs, "folder": folder_pairs}


def _train_id_lut(layout: Layout) -> np.ndarray | None:
    """A 256-entry lookup from stored label values to train ids (None: stored values are train ids)."""
    if layout.reduce_zero_label:
        lut = np.arange(256, dtype=np.int32) - 1
        lut[[0, IGNORE_INDEX]] = IGNORE_INDEX  # "other" and ignore -> ignore
        return lut.astype(np.uint8)
    return None


def read_label_image(path: Path) -> np.ndarray:
    """A label image's stored values (H, W): a gray image's pixels, or a palette PNG's indices (the colours are only
    for viewing; mmseg reads them with Pillow too). OffsegError for an image with colour channels."""
    check_image_file(path, "label image")
    if png_colour_type(path) == PNG_PALETTE:
        try:
            from PIL import Image
        except ImportError:
            raise OffsegError(f"{path} is a palette PNG; reading its indices needs Pillow: pip install "
                              "'offseg-deploy[torch]'") from None
        try:
            with Image.open(path) as picture:
                return np.asarray(picture)
        except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for a corrupt file
            raise OffsegError(f"cannot read label image {path}: {error}") from error
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise OffsegError(f"cannot read label image {path}: not an image OpenCV can read")
    if labels.ndim != 2:
        raise OffsegError(f"{path} holds {labels.shape[2]} channels: a label image holds one class index per pixel "
                          "(a gray or palette PNG), not a colour picture of the classes")
    return labels


def _turned_by_exif(image_path: Path, label_shape: tuple[int, int]) -> str:
    """Why an image and its labels differ in shape when the image's EXIF orientation turned it (OpenCV decodes
    images upright, as mmseg does, and labels as stored); empty otherwise."""
    stored = cv2.imread(str(image_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if stored is None or stored.shape[:2] != label_shape:
        return ""
    return (" once turned upright by its EXIF orientation tag, as OpenCV (and mmseg) decode it, while the labels "
            "match its stored pixels: turn the label image the same way, or remove the tag from the image")


def check_data_root(name: str, root) -> None:
    """OffsegError for a dataset on disk without ``--data-root``, or a root given for the built-in synthetic scenes
    (``--dataset`` left at its default: the run would not read the folder)."""
    if name == "synthetic" and root is not None:
        raise OffsegError(f"--data-root {root} is given but --dataset is synthetic (built-in scenes, no files): add "
                          f"--dataset ({', '.join(n for n in LAYOUTS if n != 'synthetic')}), or drop --data-root")
    if name != "synthetic" and root is None:
        raise OffsegError(f"--data-root is required for {name}")


class SegmentationDataset:
    """Image/label pairs of one split; ``transform(image, labels)`` is applied on access.

    Label values at or above the class count (other than 255, ignored) raise OffsegError naming the file
    when ``strict_labels`` (training); otherwise they become 255, are counted in ``out_of_range_pixels`` and the
    first file read (evaluation reads on several threads) is named in a warning, so evaluation leaves those
    pixels out. mmseg does not: its IoUMetric keeps them, counting their predictions in the predicted class's union
    (false positives that lower its IoU) and nowhere in the ground truth (aAcc and mAcc unchanged). No correctly
    converted dataset has such labels.
    """

    def __init__(self, name: str, root: str | Path | None, split: str = "train",
                 transform: Callable | None = None, length: int = 200, size: tuple[int, int] = synthetic.SCENE_SIZE,
                 strict_labels: bool = False):
        self.strict_labels, self.out_of_range_pixels = strict_labels, 0
        self.classes_from: Path | None = None  # the file that names the classes (a folder dataset's classes.txt)
        self._count_lock = threading.Lock()  # loads run on several threads (offseg.evaluate.prefetched)
        if name not in LAYOUTS:
            raise OffsegError(f"unknown dataset {name!r}; choose from {', '.join(LAYOUTS)}")
        self.layout, self.split, self.transform = LAYOUTS[name], split, transform
        if name != "folder" and split not in self.layout.splits:
            raise OffsegError(f"{name} has no split {split!r} (splits: {', '.join(self.layout.splits)})")
        self.lut = _train_id_lut(self.layout)
        check_data_root(name, root)
        if name == "synthetic":
            self.pairs, self.classes = [], synthetic.CLASSES
            self.length, self.size = length, size
            self.seed_base = 0 if split == "train" else 1_000_000
            return
        root = _require_dir(Path(root), f"{name} root")
        self.pairs = PAIRS[name](root, split)
        self.classes = folder_classes(root) if name == "folder" else DATASET_CLASSES[name]
        self.length = len(self.pairs)
        if name == "folder":
            self.classes_from = root / "classes.txt"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_count(self) -> str:
        """Whose class count this is, for a mismatch message: ``ade20k has 150 classes``."""
        where = f"{self.classes_from} names" if self.classes_from else f"{self.layout.name} has"
        return f"{where} {counted(self.num_classes, 'class')}"

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed (image, train-id labels) at ``index``."""
        if not self.pairs:
            return synthetic.render_scene(self.seed_base + index, *self.size)
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        labels = read_label_image(label_path)
        if labels.dtype != np.uint8:
            raise OffsegError(f"{label_path} holds {8 * labels.itemsize}-bit labels ({labels.dtype}); label images "
                              f"must be 8-bit (values 0-255, {IGNORE_INDEX} = ignore): convert it")
        if labels.shape != image.shape[:2]:
            raise OffsegError(f"{label_path} is {labels.shape}, its image {image_path} is {image.shape[:2]}"
                              + _turned_by_exif(image_path, labels.shape))
        if self.layout.name == "cityscapes" and label_path.name.endswith("_labelIds.png"):
            lut = np.full(256, IGNORE_INDEX, np.uint8)
            for label_id, train_id in CITYSCAPES_ID_TO_TRAIN.items():
                lut[label_id] = train_id
            labels = lut[labels]
        elif self.lut is not None:
            labels = self.lut[labels]
        return image, self._check_range(labels, label_path).astype(np.uint8)

    def _check_range(self, labels: np.ndarray, path: Path) -> np.ndarray:
        """``labels`` with out-of-range values set to the ignore index (or OffsegError when strict)."""
        outside = (labels != IGNORE_INDEX) & (labels >= self.num_classes)
        if not outside.any():
            return labels
        values = ", ".join(str(v) for v in np.unique(labels[outside])[:5])
        sentence = (f"{path} has label values {values}, outside the {self.num_classes} classes of {self.layout.name} "
                    f"(0-{self.num_classes - 1}) and not the ignore index {IGNORE_INDEX}")
        if self.strict_labels:
            raise OffsegError(f"{sentence}: fix the labels or choose the dataset they were made for")
        with self._count_lock:
            first = not self.out_of_range_pixels
            self.out_of_range_pixels += int(outside.sum())
        if first:
            log.warning("%s; those pixels are left out of the scores (counted; warned once)", sentence)
        return np.where(outside, IGNORE_INDEX, labels)

    def __getstate__(self) -> dict:
        """For DataLoader workers started by spawn or forkserver: a lock does not pickle."""
        return {key: value for key, value in self.__dict__.items() if key != "_count_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._count_lock = threading.Lock()

    def __getitem__(self, index: int):
        image, labels = self.load(index)
        return self.transform(image, labels) if self.transform else (image, labels)
