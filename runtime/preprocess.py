"""The single definition of OffSeg's input preprocessing (numpy only, shared by PyTorch and the runtime).

The official models were trained on RGB images normalized with ImageNet mean/std in 0-255 units
(mmseg ``SegDataPreProcessor``: ``bgr_to_rgb=True``); OpenCV hands us BGR.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import OffsegError

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32  # every input side must be a multiple of this
CV_MAX_CHANNELS = 512  # cv2.resize handles at most this many channels at once
# What a graph takes (name -> the ``offseg.input_format`` metadata value). The last two fold mean/std into the
# graph: uint8 frames, or float32 pixels 0-255 as DeepStream's nvinfer feeds them (net-scale-factor 1, offsets 0).
INPUT_FORMATS = {"normalized": "float32 normalized RGB NCHW", "uint8-rgb": "uint8 RGB NCHW",
                 "float-rgb-0-255": "float32 RGB 0-255 NCHW"}
# The graph input's layout (``offseg.input_layout``): (N, 3, H, W), or (N, H, W, 3) as cameras and decoders hand
# frames over (the graph transposes it first, after the Cast to float of a uint8 input: a layout reformat to TensorRT).
INPUT_LAYOUTS = ("nchw", "nhwc")


def input_format_text(input_format: str, input_layout: str = "nchw") -> str:
    """The ``offseg.input_format`` metadata value of a graph input: e.g. ``uint8 RGB NHWC``."""
    return f"{INPUT_FORMATS[input_format].removesuffix(' NCHW')} {input_layout.upper()}"


def normalize_bgr(image: np.ndarray) -> np.ndarray:
    """uint8 BGR image (H, W, 3) -> float32 normalized RGB tensor (1, 3, H, W)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise OffsegError(f"expected a colour image of shape (H, W, 3), got {image.shape}")
    rgb = image[:, :, ::-1].astype(np.float32)
    normalized = (rgb - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1)[None])


def padded_size(height: int, width: int, divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """Smallest (H, W) >= the given size with both sides multiples of ``divisor``."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


@dataclass(frozen=True)
class Geometry:
    """How a frame was fitted to the model input: scaled by ``scale`` (y, x), placed at the top-left, padded."""

    frame_size: tuple[int, int]  # (h, w) of the original frame
    input_size: tuple[int, int]  # (H, W) fed to the model
    content_size: tuple[int, int]  # (h', w') of the resized frame inside the input

    def labels_to_frame(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) labels at the model input -> (h, w) labels of the frame (nearest neighbour)."""
        content = labels[:self.content_size[0], :self.content_size[1]]
        if content.shape == self.frame_size:
            return np.ascontiguousarray(content)
        return cv2.resize(content, self.frame_size[::-1], interpolation=cv2.INTER_NEAREST)


RESIZE_POLICIES = ("letterbox", "stretch")


class FrameTooSmall(OffsegError):
    """A frame that shrinks to nothing when fitted to the model input (e.g. 1x5000 into 512x512)."""


def fitted_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of ``size`` scaled to fit inside ``target`` with its aspect ratio kept (a side may round to 0)."""
    scale = min(target[0] / size[0], target[1] / size[1])
    return min(round(size[0] * scale), target[0]), min(round(size[1] * scale), target[1])


def fit_frame(image: np.ndarray, input_size: tuple[int, int] | None, policy: str = "letterbox"):
    """Fit a BGR frame to the model input: (fitted BGR image, Geometry).

    Dynamic models (``input_size`` None) get the frame padded bottom/right to a multiple of 32. Fixed-size models
    get it resized: ``letterbox`` keeps the aspect ratio and pads bottom/right with black, ``stretch`` fills it.
    """
    h, w = image.shape[:2]
    if input_size is None:
        target = padded_size(h, w)
        content = (h, w)
        resized = image
    else:
        target = tuple(input_size)
        if policy == "stretch":
            content = target
        elif policy == "letterbox":
            content = fitted_size((h, w), target)
        else:
            raise OffsegError(f"resize policy must be one of {', '.join(RESIZE_POLICIES)}, not {policy!r}")
        if min(content) < 1:
            raise FrameTooSmall(f"a {h}x{w} frame shrinks to nothing in the {target[0]}x{target[1]} model input")
        resized = image if content == (h, w) else cv2.resize(image, content[::-1], interpolation=cv2.INTER_LINEAR)
    fitted = cv2.copyMakeBorder(resized, 0, target[0] - content[0], 0, target[1] - content[1],
                                cv2.BORDER_CONSTANT, value=0) if content != target else resized
    return fitted, Geometry((h, w), target, content)


def in_layout(batch: np.ndarray, input_layout: str) -> np.ndarray:
    """An (N, 3, H, W) batch in ``input_layout``: itself for nchw, (N, H, W, 3) contiguous for nhwc."""
    return batch if input_layout == "nchw" else np.ascontiguousarray(batch.transpose(0, 2, 3, 1))


def to_model_input(images: list[np.ndarray], input_format: str = "normalized",
                   input_layout: str = "nchw") -> np.ndarray:
    """Fitted BGR frames -> one batch in ``input_format`` (a key of INPUT_FORMATS): (N, 3, H, W), or (N, H, W, 3)
    when ``input_layout`` is nhwc (the frames' own layout: RGB pixels are then only stacked, never transposed)."""
    if input_format == "normalized":
        return in_layout(np.concatenate([normalize_bgr(im) for im in images]), input_layout)
    rgb = np.stack([im[:, :, ::-1] for im in images])
    if input_layout == "nchw":
        rgb = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))
    return rgb if input_format == "uint8-rgb" else rgb.astype(np.float32)


def resize_channels_last(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, K) float32 -> (H, W, K), bilinear with half-pixel centres (torch's ``align_corners=False``)."""
    if logits.shape[:2] == tuple(size):
        return logits
    chunks = [cv2.resize(np.ascontiguousarray(logits[:, :, i:i + CV_MAX_CHANNELS]), tuple(size)[::-1],
                         interpolation=cv2.INTER_LINEAR).reshape(*size, -1)
              for i in range(0, logits.shape[2], CV_MAX_CHANNELS)]
    return np.concatenate(chunks, axis=2)


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) logits -> (H, W, K) float32, resized bilinearly (align_corners=False, as torch's interpolate)."""
    return resize_channels_last(np.ascontiguousarray(logits.astype(np.float32, copy=False).transpose(1, 2, 0)), size)


def logits_to_labels(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, K, h, w) logits -> (N, H, W) int64 labels: bilinear resize to ``size`` (as PyTorch's side does), then
    argmax (first maximum on ties, as numpy and torch).

    Class by class: each resized map updates a running maximum, so the (K, H, W) full-resolution volume is never
    built (150 classes at 512x512: 157 MB) and OpenCV resizes single-channel maps, its fastest path."""
    labels = np.zeros((len(logits), *size), np.int64)
    for item, out in zip(logits, labels):
        best = None
        for k, channel in enumerate(item.astype(np.float32, copy=False)):
            resized = channel if channel.shape == tuple(size) else \
                cv2.resize(channel, tuple(size)[::-1], interpolation=cv2.INTER_LINEAR)
            if best is None:
                best = resized.copy()
                continue
            better = resized > best
            out[better] = k
            np.maximum(best, resized, out=best)
    return labels


def sliding_windows(height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]):
    """(y1, y2, x1, x2) of mmseg's ``slide`` windows: ``crop``-sized every ``stride``, the last ones flush with the
    border (smaller than ``crop`` only when the image is)."""
    rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride[0] + crop[0], height), min(col * stride[1] + crop[1], width)
            yield max(y2 - crop[0], 0), y2, max(x2 - crop[1], 0), x2
