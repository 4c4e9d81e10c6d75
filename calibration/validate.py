"""mIoU parity of an exported model (ONNX or TensorRT engine) against PyTorch, with the paper's test protocol.

Both sides see the same preprocessed pixels: whole-image inference fits the image to the engine's input (a dynamic
engine takes it padded to a multiple of 32), sliding-window inference runs windows of the engine's input size at the
dataset's stride; logits are resized bilinearly to the window/image *before* windows are averaged and before argmax.
An engine that outputs labels is compared on labels (whole mode only), and the report says so.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from runtime.metrics import ConfusionMatrix
from runtime.preprocess import fit_frame, resize_logits, sliding_windows, to_model_input

Infer = Callable[[np.ndarray], np.ndarray]  # (1, 3, H, W) model input -> (1, K, h, w) logits or (1, H, W) labels


def whole(image: np.ndarray, infer: Infer, input_size, uint8_input: bool, labels_out: bool):
    """(H, W, K) logits or (H, W) labels at the image size."""
    fitted, geometry = fit_frame(image, input_size)
    output = infer(to_model_input([fitted], uint8_input))[0]
    if labels_out:
        return geometry.labels_to_frame(output.astype(np.int32))
    logits = resize_logits(output, geometry.input_size)[:geometry.content_size[0], :geometry.content_size[1]]
    if logits.shape[:2] != image.shape[:2]:
        logits = np.concatenate([cv2.resize(logits[:, :, i:i + 512], image.shape[1::-1],
                                            interpolation=cv2.INTER_LINEAR).reshape(*image.shape[:2], -1)
                                 for i in range(0, logits.shape[2], 512)], axis=2)
    return logits


def slide(image: np.ndarray, infer: Infer, crop: tuple[int, int], stride: tuple[int, int], uint8_input: bool):
    """(H, W, K) sliding-window logits (mmseg ``slide``), windows of ``crop`` every ``stride``."""
    h, w = image.shape[:2]
    total, count = None, np.zeros((h, w, 1), np.float32)
    for y1, y2, x1, x2 in sliding_windows(h, w, crop, stride):
        logits = whole(image[y1:y2, x1:x2], infer, crop, uint8_input, False)  # small windows: letterboxed
        if total is None:
            total = np.zeros((h, w, logits.shape[2]), np.float32)
        total[y1:y2, x1:x2] += logits
        count[y1:y2, x1:x2] += 1
    return total / count


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


def compare(dataset, reference: Infer, engine: Infer, input_size, uint8_input: bool, labels_out: bool,
            mode: str, crop, stride, max_images: int | None = None, keep_samples: int = 3,
            progress: bool = True) -> Comparison:
    """Run both sides on ``dataset`` images with the same preprocessing and accumulate the scores."""
    from tqdm import tqdm

    if labels_out:
        mode = "whole"
    result = Comparison(mode, labels_out, ConfusionMatrix(dataset.num_classes), ConfusionMatrix(dataset.num_classes))
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for index in tqdm(range(count), desc=f"validating ({mode})", disable=not progress, leave=False):
        image, truth = dataset.load(index)
        outputs = {}
        for side, infer in (("reference", reference), ("engine", engine)):
            start = time.perf_counter()
            if side == "engine" and labels_out:
                outputs[side] = whole(image, infer, input_size, uint8_input, True)
            elif mode == "slide":
                outputs[side] = slide(image, infer, input_size or crop, stride,
                                      uint8_input if side == "engine" else False)
            else:
                outputs[side] = whole(image, infer, input_size, uint8_input if side == "engine" else False, False)
            result.seconds[side] += time.perf_counter() - start
        ref_labels = outputs["reference"].argmax(axis=2)
        eng = outputs["engine"]
        eng_labels = eng if labels_out else eng.argmax(axis=2)
        if not labels_out:
            result.max_logit_diff = max(result.max_logit_diff, float(np.abs(eng - outputs["reference"]).max()))
        result.reference.update(ref_labels, truth)
        result.engine.update(eng_labels, truth)
        result.agreement_pixels += int((ref_labels == eng_labels).sum())
        result.total_pixels += ref_labels.size
        result.images += 1
        if len(result.samples) < keep_samples:
            result.samples.append((image, truth, ref_labels.astype(np.uint8), eng_labels.astype(np.uint8)))
    return result
