"""ROS 2 image messages <-> numpy, shared by the rosbag2 twin (``rosbags`` types) and the live node (``rclpy``).

The readers take any object with the ROS field names; the writers build messages through a ``MessageKit`` (one
library's constructors), so both libraries go through the same conversions. Labels follow vision_msgs: the largest
value of the id type means UNLABELED, so ``mono8`` carries ids 0-254 and more classes need ``mono16``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .backends import ModelInfo
from .draw import class_names, palette_for
from .errors import OffsegError
from .postprocess import overlay

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
LABEL_INFO = "vision_msgs/msg/LabelInfo"
VISION_CLASS = "vision_msgs/msg/VisionClass"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
# The raw encodings read (sensor_msgs/image_encodings): bytes per pixel and OpenCV's conversion to BGR. RGBA/BGRA
# come from ZED and some industrial cameras, Bayer from machine-vision drivers (ROS's rggb = OpenCV's BayerBG, as
# cv_bridge converts), packed YUV 4:2:2 from usb_cam (yuv422 is UYVY, yuv422_yuy2 is YUYV).
RAW_ENCODINGS = {
    "bgr8": (3, None), "rgb8": (3, cv2.COLOR_RGB2BGR), "mono8": (1, cv2.COLOR_GRAY2BGR),
    "bgra8": (4, cv2.COLOR_BGRA2BGR), "rgba8": (4, cv2.COLOR_RGBA2BGR),
    "bayer_rggb8": (1, cv2.COLOR_BayerBG2BGR), "bayer_bggr8": (1, cv2.COLOR_BayerRG2BGR),
    "bayer_gbrg8": (1, cv2.COLOR_BayerGR2BGR), "bayer_grbg8": (1, cv2.COLOR_BayerGB2BGR),
    "yuv422": (2, cv2.COLOR_YUV2BGR_UYVY), "yuv422_yuy2": (2, cv2.COLOR_YUV2BGR_YUY2),
}
COLOUR_ENCODINGS = ("rgb8", "bgr8")
MONO8_CLASSES = 255  # 255 itself is vision_msgs' UNLABELED id for uint8


def raw_to_bgr(msg) -> np.ndarray:
    """A ``sensor_msgs/Image`` in one of ``RAW_ENCODINGS`` (rows may be padded to ``step``) -> (H, W, 3) uint8 BGR.

    Raises OffsegError for another encoding or a size that its data does not hold."""
    if msg.encoding not in RAW_ENCODINGS:
        raise OffsegError(f"image encoding {msg.encoding!r} is not supported; publish one of "
                          f"{', '.join(RAW_ENCODINGS)} (8 bits per channel) or a CompressedImage")
    channels, conversion = RAW_ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, np.uint8)
    if not height or not width or step < width * channels or data.size < step * height:
        raise OffsegError(f"a {width}x{height} {msg.encoding} image needs a step of at least {width * channels} "
                          f"and step x height bytes, but has step {step} and {data.size} bytes")
    if channels == 2 and width % 2:
        raise OffsegError(f"a {msg.encoding} image has pixels in pairs, but this one is {width} wide")
    pixels = data[:step * height].reshape(height, step)[:, :width * channels].reshape(height, width, channels)
    return pixels.copy() if conversion is None else cv2.cvtColor(pixels, conversion)


def compressed_to_bgr(msg) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (JPEG, PNG, any format OpenCV decodes) -> (H, W, 3) uint8 BGR."""
    if "compressedDepth" in msg.format:
        raise OffsegError(f"a CompressedImage in format {msg.format!r} holds depth, not a colour image")
    image = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise OffsegError(f"a CompressedImage in format {msg.format!r} could not be decoded by OpenCV")
    return image


def to_bgr(msg) -> np.ndarray:
    """An Image or a CompressedImage -> (H, W, 3) uint8 BGR."""
    return raw_to_bgr(msg) if hasattr(msg, "encoding") else compressed_to_bgr(msg)


@dataclass(frozen=True)
class MessageKit:
    """One ROS library's message constructors (keyword fields) and its value for a ``uint8[]`` field."""

    image: Callable
    label_info: Callable
    vision_class: Callable
    byte_array: Callable[[np.ndarray], object]


def label_encoding(num_classes: int) -> str:
    return "mono8" if num_classes <= MONO8_CLASSES else "mono16"


def image_message(kit: MessageKit, pixels: np.ndarray, encoding: str, header):
    """An Image of (H, W) or (H, W, C) ``pixels`` (uint8, or uint16 stored little-endian), rows unpadded."""
    height, width = pixels.shape[:2]
    row = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<")).view(np.uint8).reshape(height, -1)
    return kit.image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                     step=row.shape[1], data=kit.byte_array(row.reshape(-1)))


def parse_colour_encoding(encoding: str) -> str:
    if encoding not in COLOUR_ENCODINGS:
        raise OffsegError(f"the colour image encoding must be rgb8 or bgr8, got {encoding!r}")
    return encoding


class SegmentationMessages:
    """The messages published per frame (label image, colour overlay) and once (LabelInfo) for a model."""

    def __init__(self, kit: MessageKit, info: ModelInfo, alpha: float = 0.5, colour_encoding: str = "rgb8",
                 palette: np.ndarray | None = None):
        if not 0 <= alpha <= 1:
            raise OffsegError(f"the overlay opacity must be between 0 and 1, got {alpha:g}")
        self.kit, self.alpha = kit, alpha
        self.colour_encoding = parse_colour_encoding(colour_encoding)
        self.label_encoding = label_encoding(info.num_classes)
        self.names = class_names(info)
        self.palette = palette_for(info) if palette is None else palette

    def labels(self, labels: np.ndarray, header):
        """The label image: class ids as ``mono8`` (or ``mono16``), the input's header."""
        dtype = np.uint8 if self.label_encoding == "mono8" else np.uint16
        return image_message(self.kit, labels.astype(dtype), self.label_encoding, header)

    def overlay(self, image_bgr: np.ndarray, labels: np.ndarray, header):
        """The class colours blended over the frame (``alpha`` 1: the colour mask alone)."""
        blended = overlay(image_bgr, labels, self.palette, self.alpha)
        if self.colour_encoding == "rgb8":
            blended = cv2.cvtColor(blended, cv2.COLOR_BGR2RGB)
        return image_message(self.kit, blended, self.colour_encoding, header)

    def label_info(self, header):
        """vision_msgs/LabelInfo: class id -> name for every class of the model (no confidence threshold: 0)."""
        classes = [self.kit.vision_class(class_id=index, class_name=name) for index, name in enumerate(self.names)]
        return self.kit.label_info(header=header, class_map=classes, threshold=0.0)


def palette_from_hex(colours: Sequence[int], num_classes: int) -> np.ndarray:
    """Isaac ROS's ``color_palette`` (one 0xRRGGBB integer per class) -> (K, 3) uint8 RGB."""
    if len(colours) < num_classes or any(not 0 <= c <= 0xFFFFFF for c in colours):
        raise OffsegError(f"color_palette needs {num_classes} colours written 0xRRGGBB, got {len(colours)}")
    return np.array([((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in colours], np.uint8)
