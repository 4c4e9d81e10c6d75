"""The paper's test protocol (mmseg's test pipeline and ``EncoderDecoder`` inference) on any logits function.

For one image: ``Resize(scale, keep_ratio=True)`` as the dataset's test pipeline does (mmcv's rule, bilinear),
normalization, then ``whole`` (one forward at the resized size) or ``slide`` (windows of ``crop`` every ``stride``,
each window's logits resized to the window, overlaps averaged) inference, and the logits resized bilinearly back
to the original size before argmax. ``offseg-validate`` runs both of its sides (PyTorch and the exported model)
through this module, so they are compared by construction; ``offseg-eval`` runs the same steps with torch tensors
on the model's device (``offseg.device_protocol``; tests hold its logits to this module's within 1e-4).

mmseg feeds a window to the model as it is. The official model runs only sides whose stride-4 size is a multiple
of 8 (multiples of 32 and the three sizes below each) and fails on others; ours takes multiples of 32. So a window
that is not a multiple of 32 is padded bottom/right with 0 after normalization (mmseg's ``pad_val``) and its
logits cropped. At the official scales (ADE20K and COCO-Stuff resized to a 512 short side, slide windows of 512)
every window is already 512x512.

A protocol with ``size_divisor`` (SegNeXt's Pascal Context config: ``SegDataPreProcessor`` ``test_cfg``
``size_divisor=32``) first pads the whole resized image bottom/right with 0 to multiples of it, as mmseg's
``stack_batch`` does, runs whole or slide inference on the padded image (so the windows are placed on it), and
crops the padding off the logits before resizing them back, as mmseg's ``postprocess_result`` does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from runtime.errors import OffsegError
from runtime.preprocess import (normalize_bgr, padded_size, resize_channels_last, resize_logits,
                                sliding_windows)

from .data.transforms import keep_ratio_size

Infer = Callable[[np.ndarray], np.ndarray]  # (1, 3, h, w) normalized float32 -> (1, K, h', w') logits
TEST_MODES = ("whole", "slide")


@dataclass(frozen=True)
class TestProtocol:
    """A dataset's test pipeline: keep-ratio resize to ``scale`` (None: original size), then whole or slide."""

    __test__ = False  # not a pytest test class despite the name
    mode: str = "whole"
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (480, 480)
    scale: tuple[int, int] | None = None
    size_divisor: int | None = None  # pad the whole resized image to multiples of this first

    def __post_init__(self):
        if self.mode not in TEST_MODES:
            raise OffsegError(f"test mode must be one of {', '.join(TEST_MODES)}, not {self.mode!r}")

    @classmethod
    def for_layout(cls, layout, mode: str | None = None) -> TestProtocol:
        """The official test protocol of a ``datasets.Layout`` (``mode`` overrides its inference mode)."""
        return cls(mode or layout.test_mode, tuple(layout.crop), tuple(layout.stride), layout.test_scale,
                   layout.test_size_divisor)

    def describe(self) -> str:
        resize = f"resize to {self.scale[0]}x{self.scale[1]} keep-ratio" if self.scale else "original size"
        if self.size_divisor:
            resize += f", image padded to multiples of {self.size_divisor}"
        if self.mode == "whole":
            return f"{resize}, whole"
        return f"{resize}, slide {self.crop[0]}x{self.crop[1]} stride {self.stride[0]}x{self.stride[1]}"


def test_resize(image: np.ndarray, scale: tuple[int, int] | None) -> np.ndarray:
    """mmcv ``Resize(scale, keep_ratio=True)``: bilinear, long edge <= max(scale), short edge <= min(scale)."""
    if scale is None:
        return image
    size = keep_ratio_size(*image.shape[:2], scale)
    if size == image.shape[:2]:
        return image
    return cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)


def forward_window(infer: Infer, x: np.ndarray) -> np.ndarray:
    """(1, 3, h, w) normalized input -> (h, w, K) logits at the input size (mmseg ``encode_decode``).

    Pads with 0 (mmseg's ``pad_val``, after normalization) only when a side is not a multiple of 32.
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w)
    if (ph, pw) != (h, w):
        x = np.pad(x, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)))
    logits = np.asarray(infer(np.ascontiguousarray(x)), np.float32)[0]
    return resize_logits(logits, (ph, pw))[:h, :w]


def slide(x: np.ndarray, infer: Infer, crop: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """mmseg ``slide_inference`` on a (1, 3, H, W) input: (H, W, K) logits, overlapping windows averaged."""
    h, w = x.shape[-2:]
    total, count = None, np.zeros((h, w, 1), np.float32)
    for y1, y2, x1, x2 in sliding_windows(h, w, crop, stride):
        logits = forward_window(infer, x[:, :, y1:y2, x1:x2])
        if total is None:
            total = np.zeros((h, w, logits.shape[2]), np.float32)
        total[y1:y2, x1:x2] += logits
        count[y1:y2, x1:x2] += 1
    return total / count


def protocol_logits(image: np.ndarray, infer: Infer, protocol: TestProtocol) -> np.ndarray:
    """(H, W, K) float32 logits of a uint8 BGR image at its original size, by the test protocol."""
    x = normalize_bgr(test_resize(image, protocol.scale))
    h, w = x.shape[-2:]
    if protocol.size_divisor:
        ph, pw = padded_size(h, w, protocol.size_divisor)
        x = np.pad(x, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)))
    logits = forward_window(infer, x) if protocol.mode == "whole" else slide(x, infer, protocol.crop,
                                                                              protocol.stride)
    return resize_channels_last(logits[:h, :w], image.shape[:2])


def fixed_size(infer: Infer, input_size: tuple[int, int], stride: tuple[int, int]) -> Infer:
    """An ``Infer`` for inputs of any size on a backend with one fixed input size (a static ONNX or engine).

    An input that fits is padded bottom/right with 0 (normalized: the mean colour, what mmseg pads with) and the
    logits cropped back; a larger one runs as sliding windows of ``input_size`` every ``stride``. Returns logits
    at the input's own size.
    """
    height, width = input_size

    def run(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[-2:]
        if h > height or w > width:
            return slide(x, run, input_size, stride).transpose(2, 0, 1)[None]
        padded = np.pad(x, ((0, 0), (0, 0), (0, height - h), (0, width - w)))
        logits = np.asarray(infer(np.ascontiguousarray(padded)), np.float32)[0]
        return resize_logits(logits, input_size)[:h, :w].transpose(2, 0, 1)[None]

    return run
