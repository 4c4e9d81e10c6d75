"""DeepStream's ``nvinfer`` emulated in numpy from a DeepStream package's config (``offseg-validate --deepstream``):
the key file read as GLib reads it, nvinfer's frame scaling and normalization, ONNX Runtime on ``onnx-file``, its
segmentation parser, and the masks mapped back onto the source frame.

The rules follow DeepStream's public sources:
- ``gstnvinfer.cpp`` ``get_converted_buffer``: the source is cropped to even sides (``GST_ROUND_DOWN_2``); with
  ``maintain-aspect-ratio=1`` the scaled size is ``infer-dims`` width by ``width * h / w`` truncated (or the other
  way round when that is too tall), padded black at right/bottom, or on both sides with ``symmetric-padding=1``
  (``(net - scaled) // 2`` at left/top); ``scaling-filter`` picks the scaler (``NvBufSurfTransform_Inter``).
- ``nvdsinfer_conversion.cu``: planar float ``y[k] = net-scale-factor * (x[k] - offsets[k])`` for network channel
  ``k`` (``model-color-format`` 0 RGB, 1 BGR), in float32; interleaved (NHWC) with ``network-input-order=1``
  (``nvdsinfer_context_impl.cpp`` picks ``NvDsInferConvert_C3ToL3Float``; ``infer-dims`` stay ``3;H;W``).
- ``nvdsinfer_context_impl_output_parsing.cpp`` ``fillSegmentationOutput`` (``network-type=2``): each pixel starts
  at class -1 and maximum -1; class ``c`` replaces them only if its value is above the running maximum and above
  ``segmentation-threshold`` (float32 comparisons, so ties keep the first class). ``network-type=100`` attaches
  the raw output tensor (``output-tensor-meta=1``): an application reads the labels from it.

A -1 pixel is a pixel nvinfer gave no class: ``runtime.metrics.ConfusionMatrix`` counts it as wrong (a miss of its
true class). Not emulated: the decoder's NV12 to RGBA conversion, nvstreammux's own scaling, the GPU/VIC scalers'
exact rounding (OpenCV's stand in), and TensorRT's numbers (ONNX Runtime's stand in).
"""
from __future__ import annotations

import configparser
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.backends import open_backend
from runtime.errors import OffsegError
from runtime.preprocess import FrameTooSmall, fit_frame, in_layout, logits_to_labels, normalize_bgr

CONFIG = "config_infer_primary_offseg.txt"  # the name offseg-export --format deepstream writes
# NvBufSurfTransform_Inter -> the OpenCV scaler standing in for it (GPU meaning; 5 is "ignored" on the GPU)
SCALING_FILTERS = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 2: cv2.INTER_CUBIC, 3: cv2.INTER_AREA,
                   4: cv2.INTER_LANCZOS4, 6: cv2.INTER_NEAREST}
FILTER_NAMES = {0: "nearest", 1: "bilinear", 2: "cubic", 3: "super-sampling", 4: "Lanczos", 6: "nearest (default)"}
SEGMENTATION, TENSOR_META = 2, 100  # the network-type values emulated


def read_key_file(path: Path) -> dict[str, dict[str, str]]:
    """Groups -> keys -> raw values of a GLib key file, as nvinfer reads its config: GLib's own parser (python3-gi)
    when importable, else configparser held to GLib's rules. OffsegError when it does not parse."""
    try:
        from gi.repository import GLib
    except ImportError:
        return _read_with_configparser(path)
    keys = GLib.KeyFile()
    try:
        keys.load_from_file(str(path), GLib.KeyFileFlags.NONE)
    except GLib.Error as error:
        raise OffsegError(f"{path} is not a key file GLib (and so nvinfer) can read: {error.message}") from None
    return {group: {key: keys.get_value(group, key) for key in keys.get_keys(group)[0]}
            for group in keys.get_groups()[0]}


def _read_with_configparser(path: Path) -> dict[str, dict[str, str]]:
    """GLib's rules: ``#`` comments only, at the start of a line; ``=`` only; case-sensitive keys; leading
    whitespace of a line dropped (no continuation lines); a repeated key's last value wins, repeated groups merge;
    a value keeps its trailing whitespace (refused here: nvinfer would read ``"1 "`` as a bad number)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise OffsegError(f"cannot read the nvinfer config {path}: {error}") from None
    for number, line in enumerate(lines, 1):
        text = line.lstrip()
        if "=" in text and not text.startswith(("#", "[")) and text != text.rstrip():
            raise OffsegError(f"{path} line {number}: {text.rstrip()!r} ends in whitespace, which GLib keeps in the "
                              "value (nvinfer then misreads it): remove it")
    parser = configparser.RawConfigParser(delimiters=("=",), comment_prefixes=("#",), inline_comment_prefixes=None,
                                          strict=False, empty_lines_in_values=False, default_section="\0")
    parser.optionxform = str
    try:
        parser.read_string("\n".join(line.lstrip() for line in lines), str(path))
    except configparser.Error as error:
        raise OffsegError(f"{path} is not a key file GLib (and so nvinfer) can read: "
                          f"{str(error).splitlines()[0]}") from None
    return {group: dict(parser.items(group)) for group in parser.sections()}


class _Properties:
    """The ``[property]`` group read with GLib's typed getters' rules; every error names the key."""

    def __init__(self, values: dict[str, str], source: Path):
        self.values, self.source = values, source

    def text(self, key: str, default: str | None = None) -> str:
        value = self.values.get(key, default)
        if value is None:
            raise OffsegError(f"{self.source} has no {key}: the nvinfer emulation needs it")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.text(key, None if default is None else str(default))
        if not re.fullmatch(r"[+-]?[0-9]+", value):
            raise OffsegError(f"{self.source}: {key}={value!r} is not a whole number")
        return int(value)

    def number(self, key: str, default: float | None = None, value: str | None = None) -> float:
        value = self.text(key, None if default is None else repr(default)) if value is None else value
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not np.isfinite(number) or "_" in value:
            raise OffsegError(f"{self.source}: {key}={value!r} is not a number")
        return number

    def items(self, key: str, default: str | None = None) -> list[str]:
        """A GLib list: ``;``-separated, a trailing ``;`` allowed."""
        parts = self.text(key, default).split(";")
        return parts[:-1] if parts and parts[-1] == "" else parts

    def numbers(self, key: str, default: str | None = None) -> list[float]:
        return [self.number(key, value=item) for item in self.items(key, default)]

    def choice(self, key: str, default: int | None, allowed: tuple[int, ...], what: str) -> int:
        value = self.integer(key, default)
        if value not in allowed:
            raise OffsegError(f"{self.source}: {key}={value} is outside what the nvinfer emulation covers ({what})")
        return value


@dataclass(frozen=True)
class NvinferConfig:
    """The nvinfer keys that decide what a frame becomes: scaling, normalization, output parsing."""

    path: Path
    onnx_file: Path
    input_size: tuple[int, int]  # (H, W) of infer-dims
    net_scale_factor: float
    offsets: tuple[float, float, float]  # per network channel
    bgr: bool  # model-color-format 1
    maintain_aspect_ratio: bool
    symmetric_padding: bool
    scaling_filter: int
    network_type: int  # SEGMENTATION or TENSOR_META
    num_classes: int
    output_name: str | None  # first of output-blob-names (None: the graph's first output)
    segmentation_threshold: float
    nhwc: bool  # segmentation-output-order 1
    nhwc_input: bool = False  # network-input-order 1: interleaved float input

    @classmethod
    def read(cls, path: Path) -> NvinferConfig:
        """From a package folder (its ``config_infer_primary_offseg.txt``) or a config file."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG
        if not path.is_file():
            raise OffsegError(f"no nvinfer config at {path}: give a folder written by offseg-export --format "
                              "deepstream, or its config file")
        groups = read_key_file(path)
        if "property" not in groups:
            raise OffsegError(f"{path} has no [property] group, so nvinfer reads nothing from it")
        props = _Properties(groups["property"], path)
        unsupported = [key for key, off in (("input-tensor-meta", "0"), ("mean-file", ""), ("process-mode", "1"))
                       if groups["property"].get(key, off) != off]
        if unsupported:
            raise OffsegError(f"{path} sets {', '.join(unsupported)}: the nvinfer emulation covers full-frame "
                              "primary inference with offsets, nothing else")
        dims = props.items("infer-dims")
        if len(dims) != 3 or not all(re.fullmatch(r"[0-9]+", d) and int(d) > 0 for d in dims) or dims[0] != "3":
            raise OffsegError(f"{path}: infer-dims={props.values['infer-dims']!r} is not 3;H;W")
        offsets = props.numbers("offsets", "0;0;0")
        if len(offsets) != 3:
            raise OffsegError(f"{path}: offsets={props.values['offsets']!r} needs one value per colour channel (3)")
        network_type = props.choice("network-type", 0, (SEGMENTATION, TENSOR_META),
                                    "2 segmentation, 100 labels as tensor meta")
        names = props.items("output-blob-names", "")
        return cls(path=path, onnx_file=path.parent / props.text("onnx-file"), input_size=(int(dims[1]), int(dims[2])),
                   net_scale_factor=props.number("net-scale-factor", 1.0), offsets=tuple(offsets),
                   bgr=props.choice("model-color-format", 0, (0, 1), "0 RGB, 1 BGR") == 1,
                   maintain_aspect_ratio=props.choice("maintain-aspect-ratio", 0, (0, 1), "0 or 1") == 1,
                   symmetric_padding=props.choice("symmetric-padding", 0, (0, 1), "0 or 1") == 1,
                   scaling_filter=props.choice("scaling-filter", None, tuple(SCALING_FILTERS), "0-4, 6"),
                   network_type=network_type, num_classes=props.integer("num-detected-classes"),
                   output_name=names[0] if names else None,
                   segmentation_threshold=props.number("segmentation-threshold")
                   if network_type == SEGMENTATION else 0.0,
                   nhwc=props.choice("segmentation-output-order", 0, (0, 1), "0 NCHW, 1 NHWC") == 1,
                   nhwc_input=props.choice("network-input-order", 0, (0, 1), "0 NCHW, 1 NHWC") == 1)

    def describe(self) -> str:
        padding = "both sides" if self.symmetric_padding else "right/bottom"
        fit = f"aspect ratio kept, padded {padding}" if self.maintain_aspect_ratio else "stretched"
        return (f"nvinfer emulation: {self.input_size[0]}x{self.input_size[1]} ({fit}), "
                f"{FILTER_NAMES[self.scaling_filter]}, {'BGR' if self.bgr else 'RGB'}")


@dataclass(frozen=True)
class Placement:
    """Where nvinfer puts a frame in the network input: its ``source`` part (h, w; sides rounded down to even)
    scaled to ``size`` (h, w) at ``(top, left)``."""

    source: tuple[int, int]
    top: int
    left: int
    size: tuple[int, int]


def placement(frame_size: tuple[int, int], config: NvinferConfig) -> Placement:
    """nvinfer's geometry for a frame of ``frame_size`` (h, w) (``get_converted_buffer``)."""
    src_h, src_w = frame_size[0] // 2 * 2, frame_size[1] // 2 * 2
    net_h, net_w = config.input_size
    if min(src_h, src_w) < 2:
        raise FrameTooSmall(f"a {frame_size[0]}x{frame_size[1]} frame is below nvinfer's 2x2 minimum")
    if not config.maintain_aspect_ratio:
        return Placement((src_h, src_w), 0, 0, (net_h, net_w))
    scaled_h = net_w * src_h / src_w
    height, width = (int(scaled_h), net_w) if scaled_h <= net_h else (net_h, int(net_h * src_w / src_h))
    if min(height, width) < 1:
        raise FrameTooSmall(f"a {frame_size[0]}x{frame_size[1]} frame shrinks to nothing in {net_h}x{net_w}")
    if not config.symmetric_padding:
        return Placement((src_h, src_w), 0, 0, (height, width))
    return Placement((src_h, src_w), (net_h - height) // 2, (net_w - width) // 2, (height, width))


def preprocess(frame_bgr: np.ndarray, config: NvinferConfig) -> tuple[np.ndarray, Placement]:
    """A uint8 BGR frame -> ((1, 3, H, W) float32 network input, or (1, H, W, 3) with ``network-input-order=1``;
    its Placement), as nvinfer computes it."""
    place = placement(frame_bgr.shape[:2], config)
    source = np.ascontiguousarray(frame_bgr[:place.source[0], :place.source[1]])
    scaled = cv2.resize(source, place.size[::-1], interpolation=SCALING_FILTERS[config.scaling_filter])
    canvas = np.zeros((*config.input_size, 3), np.uint8)  # nvinfer pads with black before normalizing
    canvas[place.top:place.top + place.size[0], place.left:place.left + place.size[1]] = scaled
    planar = (canvas if config.bgr else canvas[:, :, ::-1]).transpose(2, 0, 1).astype(np.float32)
    offsets = np.asarray(config.offsets, np.float32)[:, None, None]
    network_input = (np.float32(config.net_scale_factor) * (planar - offsets))[None]
    return in_layout(network_input, "nhwc" if config.nhwc_input else "nchw"), place


def parse_segmentation(scores: np.ndarray, threshold: float, nhwc: bool = False) -> np.ndarray:
    """nvinfer's segmentation parser on one image's (K, h, w) scores ((h, w, K) when ``nhwc``): (h, w) int32 class
    map, -1 where no class is above both the running maximum (from -1) and ``threshold``."""
    planes = np.moveaxis(scores, -1, 0) if nhwc else scores
    best = np.full(planes.shape[1:], -1, np.float32)
    classes = np.full(planes.shape[1:], -1, np.int32)
    threshold = np.float32(threshold)
    for c, plane in enumerate(planes.astype(np.float32, copy=False)):
        keep = (plane > best) & (plane > threshold)
        classes[keep], best[keep] = c, plane[keep]
    return classes


def mask_to_frame(mask: np.ndarray, place: Placement, input_size: tuple[int, int],
                  frame_size: tuple[int, int]) -> np.ndarray:
    """A (h, w) mask over the network input -> the frame's (H, W) labels: each frame pixel's centre taken through
    the placement (scale, then offset; the odd last row/column as its neighbour) to the nearest mask cell."""
    axes = []
    for n, source, offset, scaled, net, cells in zip(frame_size, place.source, (place.top, place.left),
                                                     place.size, input_size, mask.shape):
        centres = np.minimum(np.arange(n) + 0.5, source - 0.5) * scaled / source + offset
        axes.append(np.clip((centres * cells / net).astype(np.int64), 0, cells - 1))
    return mask[np.ix_(*axes)]


class NvinferEmulation:
    """A DeepStream package run as nvinfer would: ``labels(frame)`` gives the frame's labels (-1: no class)."""

    def __init__(self, package: Path):
        self.config = config = NvinferConfig.read(package)
        self.backend = open_backend(config.onnx_file)
        self.info = self.backend.info
        outputs = self.backend.session.get_outputs()
        names = [o.name for o in outputs]
        name = config.output_name or names[0]
        if name not in names:
            raise OffsegError(f"{config.path}: output-blob-names {name} is not an output of {config.onnx_file.name} "
                              f"({', '.join(names)})")
        self.output_name, shape = name, outputs[names.index(name)].shape
        order = "nhwc" if config.nhwc_input else "nchw"
        if self.info.input_layout != order:
            raise OffsegError(f"{config.path}: network-input-order={int(config.nhwc_input)} ({order}) but "
                              f"{config.onnx_file.name} takes {self.info.input_layout} input")
        graph_shape = self.backend.session.get_inputs()[0].shape
        graph_size = tuple(graph_shape[1:3] if config.nhwc_input else graph_shape[2:])
        if graph_size != config.input_size:
            raise OffsegError(f"{config.path}: infer-dims {config.input_size} but {config.onnx_file.name} takes "
                              f"{graph_size}")
        if config.network_type == SEGMENTATION:
            classes = shape[3] if config.nhwc else shape[1]
            if classes != config.num_classes:
                raise OffsegError(f"{config.path}: num-detected-classes={config.num_classes} but {name} has "
                                  f"{classes} classes in the parser's order")
            self.mask_size = tuple(shape[1:3] if config.nhwc else shape[2:4])
        else:
            self.mask_size = tuple(d for d in shape[1:] if d != 1)
        self.description = f"{config.describe()}; {self.backend.description}"

    def mask(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Placement]:
        """The class map nvinfer attaches (model output size; -1: no class) and the frame's placement."""
        network_input, place = preprocess(frame_bgr, self.config)
        output = self.backend.session.run([self.output_name], {self.backend.input_name: network_input})[0][0]
        if self.config.network_type == SEGMENTATION:
            return parse_segmentation(output, self.config.segmentation_threshold, self.config.nhwc), place
        return output.reshape(self.mask_size).astype(np.int32), place

    def labels(self, frame_bgr: np.ndarray) -> np.ndarray:
        """(H, W) int32 labels of the frame (-1 where nvinfer gave no class)."""
        mask, place = self.mask(frame_bgr)
        return mask_to_frame(mask, place, self.config.input_size, frame_bgr.shape[:2])

    def close(self) -> None:
        self.backend.close()


def reference_labeller(infer: Callable[[np.ndarray], np.ndarray],
                       emulation: NvinferEmulation) -> Callable[[np.ndarray], np.ndarray]:
    """The frame -> labels function nvinfer is compared with: ``offseg-run``'s own preprocessing
    (``runtime.preprocess``, letterbox or stretch as ``maintain-aspect-ratio`` says; none of the config's numbers)
    and ``infer``'s (1, K, h, w) logits, arg-maxed at the size of nvinfer's mask (bilinear first if that is
    larger), mapped back to the frame the same way. So the comparison measures the package (keys, graph, parser),
    not the 1/4-size mask both sides share."""
    config = emulation.config
    policy = "letterbox" if config.maintain_aspect_ratio else "stretch"

    def labels(frame_bgr: np.ndarray) -> np.ndarray:
        fitted, geometry = fit_frame(frame_bgr, config.input_size, policy)
        mask = logits_to_labels(np.asarray(infer(normalize_bgr(fitted))), emulation.mask_size)[0]
        place = Placement(frame_bgr.shape[:2], 0, 0, geometry.content_size)
        return mask_to_frame(mask, place, config.input_size, frame_bgr.shape[:2])

    return labels
