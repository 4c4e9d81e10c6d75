"""rosbag2 in and out with the pure-Python ``rosbags`` library (the ``[ros]`` extra): ``offseg-ros2`` offline.

``RosbagSource`` yields the frames of one Image or CompressedImage topic, each with its message header and bag
time; ``RosbagSink`` writes what the node publishes for each of them (label image, overlay, LabelInfo) at the same
bag time, to a bag that takes its final name when closed, also after Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .backends import ModelInfo
from .errors import OffsegError
from .pipeline import Result
from .ros_images import (COMPRESSED_IMAGE, IMAGE, IMAGE_TYPES, LABEL_INFO, VISION_CLASS, MessageKit,
                         SegmentationMessages, to_bgr)
from .output_policy import check_writable_folder
from .sinks import atomic_output
from .sources import Frame, Source

log = logging.getLogger(__name__)

# vision_msgs (ros-perception/vision_msgs, ROS 2 branch) is not in the rosbags type stores: its two messages,
# field for field, so the bag carries the same definitions and hashes as a bag recorded on a robot.
VISION_MSGS = {
    VISION_CLASS: "uint16 class_id\nstring class_name\n",
    LABEL_INFO: "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
}
STORAGES = ("mcap", "sqlite3")
MCAP_MAGIC = b"\x89MCAP0\r\n"  # at the start of an MCAP file and, once the writer closes it, at its end


def _rosbags():
    try:
        import rosbags.interfaces
        import rosbags.rosbag2
        import rosbags.typesys
    except ImportError:
        raise OffsegError("reading and writing rosbag2 needs the rosbags library: pip install "
                          "'offseg-deploy[ros]'") from None
    return rosbags


@functools.lru_cache(maxsize=1)
def typestore():
    """The rosbags type store of the newest ROS 2 release, with vision_msgs' LabelInfo and VisionClass added."""
    typesys = _rosbags().typesys
    store = typesys.get_typestore(typesys.Stores.LATEST)
    for name, definition in VISION_MSGS.items():
        store.register(typesys.get_types_from_msg(definition, name))
    return store


def message_kit() -> MessageKit:
    types = typestore().types
    return MessageKit(image=types[IMAGE], label_info=types[LABEL_INFO], vision_class=types[VISION_CLASS],
                      byte_array=np.ascontiguousarray)


def storage_of(path: Path) -> str:
    """``mcap`` or ``sqlite3``: the storage of a bag folder or file."""
    files = [path] if path.is_file() else list(path.iterdir())
    return "mcap" if any(p.suffix == ".mcap" for p in files) else "sqlite3"


def unfinished_mcap_files(path: Path) -> list[str]:
    """The names of the MCAP files of a bag (folder or file) that start with the MCAP magic but do not end with it:
    the footer a writer adds when it closes the file is missing."""
    files = [path] if path.is_file() else sorted(path.glob("*.mcap"))
    unfinished = []
    for file in files:
        with contextlib.suppress(OSError), open(file, "rb") as stream:  # one it cannot read: the reader said why
            if stream.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
                continue
            stream.seek(max(stream.seek(0, os.SEEK_END) - len(MCAP_MAGIC), 0))
            if stream.read() != MCAP_MAGIC:
                unfinished.append(file.name)
    return unfinished


class RosbagSource(Source):
    """The frames of one image topic of a rosbag2 (sqlite3 or mcap): ``topic`` or else the bag's only one.

    Each ``Frame.origin`` is (message header, bag time in ns). Messages that do not deserialize are skipped and
    counted; an unsupported encoding raises OffsegError."""

    def __init__(self, path: Path, topic: str | None = None):
        super().__init__()
        rosbag2 = _rosbags().rosbag2
        if not path.exists():
            raise OffsegError(f"rosbag {path} does not exist")
        try:
            self.reader = rosbag2.Reader(path)
            self.reader.open()
        except (rosbag2.ReaderError, FileNotFoundError, OSError) as error:
            unfinished = unfinished_mcap_files(path)
            verb = "ends" if len(unfinished) == 1 else "end"
            hint = f"; {', '.join(unfinished)} {verb} without the MCAP footer, as a recording stopped abruptly or a " \
                "cut-short copy leaves it: `mcap recover` (the MCAP command-line tool) writes a readable copy of " \
                "what it holds" if unfinished else ""
            raise OffsegError(f"{path} is not a rosbag2 the rosbags library can read ({error}){hint}") from None
        self.connection = self._image_connection(path, topic)
        self.storage = storage_of(path)
        self.length = self.connection.msgcount
        seconds = self.reader.duration / 1e9
        self.fps = (self.length - 1) / seconds if self.length > 1 and seconds > 0 else None
        self.description = f"rosbag {path.name} topic {self.connection.topic}"

    def _image_connection(self, path: Path, topic: str | None):
        connections = self.reader.connections
        images = [c for c in connections if c.msgtype in IMAGE_TYPES]
        if topic is not None:
            chosen = [c for c in connections if c.topic == topic]
            if not chosen:
                listed = ", ".join(sorted({c.topic for c in images})) or "none"
                raise OffsegError(f"{path} has no topic {topic}; its image topics: {listed}")
            images = [c for c in chosen if c.msgtype in IMAGE_TYPES]
            if not images:
                raise OffsegError(f"topic {topic} in {path} carries {chosen[0].msgtype}, not {IMAGE} or "
                                  f"{COMPRESSED_IMAGE}")
        topics = sorted({c.topic for c in images})
        if not topics:
            listed = ", ".join(f"{c.topic} ({c.msgtype})" for c in connections) or "none"
            raise OffsegError(f"{path} has no {IMAGE} or {COMPRESSED_IMAGE} topic; its topics: {listed}")
        if len(topics) > 1:
            raise OffsegError(f"{path} has several image topics ({', '.join(topics)}); choose one with "
                              "--image-topic")
        if len(images) > 1:
            raise OffsegError(f"topic {topics[0]} in {path} was recorded with {len(images)} message types; "
                              "re-record it with one")
        return images[0]

    def frames(self) -> Iterator[Frame]:
        store, connection = typestore(), self.connection
        for index, (_, timestamp, raw) in enumerate(self.reader.messages(connections=[connection])):
            try:
                msg = store.deserialize_cdr(raw, connection.msgtype)
            except Exception as error:  # a corrupt message is skipped, as a corrupt video frame is
                reason = f"not a valid {connection.msgtype} ({error})"
                log.warning("skipping message %d of %s: %s", index, connection.topic, reason)
                self.skip(f"{index:06d}", reason)
                continue
            try:
                image = to_bgr(msg)
            except OffsegError as error:
                raise OffsegError(f"{connection.topic} message {index}: {error}") from None
            yield Frame(index, image, f"{index:06d}", (msg.header, timestamp))

    def close(self) -> None:
        self.reader.close()


def qos_profile(transient_local: bool):
    """The QoS a recorded publisher offered: reliable, keep last 1; transient local (latched) for LabelInfo."""
    interfaces = _rosbags().interfaces
    zero = interfaces.QosTime(0, 0)
    durability = interfaces.QosDurability.TRANSIENT_LOCAL if transient_local else interfaces.QosDurability.VOLATILE
    return interfaces.Qos(interfaces.QosHistory.KEEP_LAST, 1, interfaces.QosReliability.RELIABLE, durability,
                          zero, zero, interfaces.QosLiveliness.AUTOMATIC, zero, False)


class RosbagSink:
    """A rosbag2 of ``<namespace>/segmentation`` (labels), ``<namespace>/overlay`` and ``<namespace>/label_info``
    (once, transient local), written under a temporary name that ``close`` turns into ``path``."""

    def __init__(self, path: Path, storage: str, info: ModelInfo, namespace: str = "/offseg", alpha: float = 0.5,
                 colour_encoding: str = "rgb8"):
        rosbag2 = _rosbags().rosbag2
        self.path = self.check_target(path)
        self.messages = SegmentationMessages(message_kit(), info, alpha, colour_encoding)
        plugin = rosbag2.StoragePlugin.MCAP if storage == "mcap" else rosbag2.StoragePlugin.SQLITE3
        store, namespace = typestore(), namespace.rstrip("/")
        latched, volatile = [qos_profile(True)], [qos_profile(False)]
        with contextlib.ExitStack() as stack:  # the temporary bag is removed unless the writer is ready
            bag = stack.enter_context(atomic_output(path, folder=True))
            self.writer = rosbag2.Writer(bag, version=rosbag2.Writer.VERSION_LATEST, storage_plugin=plugin)
            self.writer.open()
            self.topics = {name: self.writer.add_connection(f"{namespace}/{name}", msgtype, typestore=store,
                                                            offered_qos_profiles=qos)
                           for name, msgtype, qos in (("segmentation", IMAGE, volatile),
                                                      ("overlay", IMAGE, volatile),
                                                      ("label_info", LABEL_INFO, latched))}
            self._output = stack.pop_all()
        self.frames = 0

    @staticmethod
    def check_target(path: Path) -> Path:
        """``path`` if a new bag can be made there; rosbag2 never writes into an existing bag."""
        if path.exists():
            raise OffsegError(f"--rosbag-out {path} exists; a bag is never overwritten: choose a new name or "
                              "remove it")
        if not path.parent.is_dir():
            raise OffsegError(f"--rosbag-out folder {path.parent} does not exist")
        check_writable_folder(path.parent, f"--rosbag-out {path}")
        return path

    def write(self, result: Result) -> None:
        """The label image and overlay of one frame from a ``RosbagSource``, with its header and bag time."""
        header, timestamp = result.frame.origin
        serialize = typestore().serialize_cdr
        if not self.frames:
            self._write("label_info", self.messages.label_info(header), timestamp, serialize)
        self._write("segmentation", self.messages.labels(result.labels, header), timestamp, serialize)
        self._write("overlay", self.messages.overlay(result.frame.image, result.labels, header), timestamp,
                    serialize)
        self.frames += 1

    def _write(self, name: str, msg, timestamp: int, serialize) -> None:
        connection = self.topics[name]
        self.writer.write(connection, timestamp, serialize(msg, connection.msgtype))

    def close(self) -> None:
        """Finish the bag (index, metadata) and give it its name; a bag that fails to finish is removed."""
        with self._output:
            self.writer.close()
