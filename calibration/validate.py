"""mIoU parity of an exported model (ONNX or TensorRT engine) against PyTorch, with the paper's test protocol.

Both sides go through ``offseg.protocol`` — the same function ``offseg-eval`` uses — so the PyTorch mIoU here is
``offseg-eval``'s: keep-ratio test resize, whole or slide inference, logits resized to the original size before
argmax. An exported model with a fixed input size follows the protocol through ``offseg.protocol.fixed_size``:
inputs that fit are padded with the mean colour and the logits cropped, larger ones run as sliding windows of its
input size; PyTorch then runs the same way, so the delta measures the export, not the geometry. A model that
outputs labels is compared on labels (one-hot votes instead of logits), and the report says so. A DeepStream
package (``--deepstream``) is compared frame by frame instead, through the emulated nvinfer
(``calibration.nvinfer``), with ``compare_sides``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from offseg.protocol import Infer, TestProtocol, fixed_size, protocol_logits
from runtime.backends import ModelInfo
from runtime.metrics import ConfusionMatrix
from runtime.preprocess import MEAN_RGB, STD_RGB, in_layout


def uint8_input(infer: Infer) -> Infer:
    """Feed a model with folded normalization: normalized float input -> the uint8 RGB pixels it came from."""
    mean, std = np.asarray(MEAN_RGB, np.float32)[:, None, None], np.asarray(STD_RGB, np.float32)[:, None, None]
    return lambda x: infer(np.clip(np.rint(x * std + mean), 0, 255).astype(np.uint8))


def pixel_input(infer: Infer) -> Infer:
    """Feed a ``float-rgb-0-255`` model (DeepStream's input): normalized float input -> float RGB 0-255."""
    mean, std = np.asarray(MEAN_RGB, np.float32)[:, None, None], np.asarray(STD_RGB, np.float32)[:, None, None]
    return lambda x: infer((x * std + mean).astype(np.float32))


def one_hot_labels(infer: Infer, num_classes: int) -> Infer:
    """A model that outputs (1, H, W) labels as (1, K, H, W) one-hot scores, so windows and resizes vote."""
    def run(x: np.ndarray) -> np.ndarray:
        labels = np.asarray(infer(x))[0].astype(np.int64)
        return (np.arange(num_classes)[:, None, None] == labels[None]).astype(np.float32)[None]
    return run


def at_input_size(infer: Infer, input_size: tuple[int, int] | None, protocol: TestProtocol) -> Infer:
    """``infer`` run the way a model with a fixed ``input_size`` (None: any size) must run: padded to it, or in
    sliding windows of it. Validation runs PyTorch this way too, so both sides see the same pixels and windows
    and the comparison measures the exported model's numbers alone."""
    if input_size is None:
        return infer
    stride = tuple(min(s, size) for s, size in zip(protocol.stride, input_size))
    return fixed_size(infer, tuple(input_size), stride)


def engine_infer(infer: Infer, info: ModelInfo, protocol: TestProtocol) -> Infer:
    """An exported model's ``infer`` adapted to the protocol's normalized NCHW inputs of any size (converted to the
    model's input format and layout) and to (1, K, h, w) scores (logits, probabilities, or one-hot labels)."""
    def run(x: np.ndarray) -> np.ndarray:
        return info.planar(infer(in_layout(x, info.input_layout)))

    adapted = {"normalized": run, "uint8-rgb": uint8_input(run), "float-rgb-0-255": pixel_input(run)}[info.input_format]
    if info.output_kind == "labels":
        adapted = one_hot_labels(adapted, info.num_classes)
    return at_input_size(adapted, info.input_size, protocol)


@dataclass
class Comparison:
    """PyTorch vs engine on one dataset."""

    mode: str
    labels_only: bool
    reference: ConfusionMatrix
    engine: ConfusionMatrix
    agreement_pixels: int = 0
    total_pixels: int = 0
    max_logit_diff: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: {"reference": 0.0, "engine": 0.0})
    images: int = 0
    samples: list = field(default_factory=list)  # (image, truth, reference labels, engine labels) for the report

    @property
    def agreement(self) -> float:
        return self.agreement_pixels / self.total_pixels if self.total_pixels else float("nan")


Labeller = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # BGR image -> (labels, scores or None)


def protocol_labeller(infer: Infer, protocol: TestProtocol) -> Labeller:
    """An image's labels and (H, W, K) logits at its original size, by the test protocol."""
    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = protocol_logits(image, infer, protocol)
        return logits.argmax(axis=2), logits
    return run


def compare(dataset, reference: Infer, engine: Infer, protocol: TestProtocol, labels_only: bool,
            max_images: int | None = None, keep_samples: int = 3, progress: bool = True) -> Comparison:
    """Run both sides on ``dataset`` images through the test protocol and accumulate the scores.

    ``engine`` must already accept any normalized input size (see ``engine_infer``)."""
    sides = {"reference": protocol_labeller(reference, protocol), "engine": protocol_labeller(engine, protocol)}
    return compare_sides(dataset, sides, protocol.mode, labels_only, max_images, keep_samples, progress)


def compare_sides(dataset, sides: dict[str, Labeller], mode: str, labels_only: bool, max_images: int | None = None,
                  keep_samples: int = 3, progress: bool = True) -> Comparison:
    """Score the ``reference`` and ``engine`` labellers on ``dataset`` images (labels at each image's size; a
    label outside the classes, e.g. nvinfer's -1, counts as wrong)."""
    from runtime.progress import progress as report_progress

    result = Comparison(mode, labels_only, ConfusionMatrix(dataset.num_classes), ConfusionMatrix(dataset.num_classes))
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for index in report_progress(range(count), f"validating ({mode})", unit="image", enabled=progress):
        image, truth = dataset.load(index)
        outputs = {}
        for side in ("reference", "engine"):
            start = time.perf_counter()
            outputs[side] = sides[side](image)
            result.seconds[side] += time.perf_counter() - start
        (ref_labels, ref_scores), (eng_labels, eng_scores) = outputs["reference"], outputs["engine"]
        if not labels_only:
            result.max_logit_diff = max(result.max_logit_diff, float(np.abs(eng_scores - ref_scores).max()))
        result.reference.update(ref_labels, truth)
        result.engine.update(eng_labels, truth)
        result.agreement_pixels += int((ref_labels == eng_labels).sum())
        result.total_pixels += ref_labels.size
        result.images += 1
        if len(result.samples) < keep_samples:
            result.samples.append((image, truth, ref_labels.astype(np.uint8), eng_labels.astype(np.uint8)))
    return result
