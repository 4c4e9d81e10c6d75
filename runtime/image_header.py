"""What an image file's structure says before decoding (OpenCV has no header-only read).

Its size: what a decoder would allocate, so a decompression bomb (a 421 KB PNG of 12000x12000) is refused without
decoding it. PNG, JPEG, BMP, WebP and TIFF headers; None for anything else or a header that does not parse (the
decoder then decides, and the decoded size is checked).

A PNG's colour type: a palette PNG's pixels are indices, which label images use (OpenCV expands them to colours).

Whether a JPEG or PNG file ends early: libjpeg decodes a truncated JPEG with its missing part gray and says only
"Premature end of JPEG file", libpng refuses a truncated PNG with "libpng error: Read Error"; neither names the
file."""
from __future__ import annotations

import os
import struct
from pathlib import Path

HEADER_BYTES = 64
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
MAX_JPEG_SEGMENTS = 1024  # metadata segments before the frame header; a real file has a handful
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk: no data, its CRC
PNG_PALETTE = 3  # IHDR colour type of an indexed-colour PNG
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length: TEM and the restarts
JPEG_SOS = 0xDA


def image_header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) that the header of the image file ``path`` declares, or None when it cannot tell."""
    with open(Path(path), "rb") as stream:
        head = stream.read(HEADER_BYTES)
        try:
            if head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
                return height, width
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(stream)
            if head.startswith(b"BM"):
                width, height = struct.unpack("<ii", head[18:26])
                return abs(height), abs(width)
            if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
                return _webp_size(head)
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                return _tiff_size(stream, "<" if head[:2] == b"II" else ">")
        except (struct.error, ValueError):
            return None
    return None


def png_colour_type(path: str | os.PathLike) -> int | None:
    """The IHDR colour type of the PNG file ``path`` (0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA); None for
    another format."""
    with open(Path(path), "rb") as stream:
        head = stream.read(26)
    return head[25] if len(head) == 26 and head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR" else None


def _jpeg_size(stream) -> tuple[int, int] | None:
    """The frame header's size: markers are walked from the start of the file, segment by segment."""
    stream.seek(2)
    for _ in range(MAX_JPEG_SEGMENTS):
        marker = stream.read(2)
        while marker[:1] == b"\xff" and marker[1:] == b"\xff":  # fill bytes
            marker = b"\xff" + stream.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        length = struct.unpack(">H", stream.read(2))[0]
        if marker[1] in JPEG_SOF:
            _, height, width = struct.unpack(">BHH", stream.read(5))
            return height, width
        stream.seek(length - 2, os.SEEK_CUR)
    return None


def jpeg_ends_early(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JPEG file that ends before its end-of-image marker (a cut-short copy or download).
    False for other files, and for data after the marker (a motion photo's video, padding)."""
    with open(Path(path), "rb") as stream:
        if stream.read(2) != b"\xff\xd8":
            return False
        stream.seek(max(stream.seek(0, os.SEEK_END) - HEADER_BYTES, 0))
        if stream.read().rstrip(b"\x00 \t\r\n").endswith(JPEG_EOI):  # nearly every file: no walk
            return False
        stream.seek(0)
        return not _jpeg_reaches_end(stream.read())


def png_ends_early(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG file that ends before its IEND chunk (chunk headers walked, data skipped, unless
    the file ends with IEND); data after IEND is allowed."""
    with open(Path(path), "rb") as stream:
        if stream.read(8) != PNG_SIGNATURE:
            return False
        size = stream.seek(0, os.SEEK_END)
        stream.seek(max(size - 12, 8))
        if stream.read() == PNG_IEND:  # nearly every file: no walk
            return False
        position = 8
        while position + 8 <= size:
            stream.seek(position)
            length, kind = struct.unpack(">I4s", stream.read(8))
            if kind == b"IEND":
                return False
            position += 12 + length  # length, type, data, CRC
        return True


def _jpeg_reaches_end(data: bytes) -> bool:
    """Whether the markers of a JPEG file, walked from its start through each scan's coded data, reach the end of
    image. A byte that is not a marker where one must be stops the walk with True: the decoder judges such a file."""
    position = 2
    while position + 1 < len(data):
        if data[position] != 0xFF:
            return True
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        if marker == JPEG_EOI[1]:
            return True
        if marker in JPEG_STANDALONE:
            position += 2
            continue
        if position + 4 > len(data):
            return False
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker == JPEG_SOS:  # coded data up to the next marker; 0xFF 0x00 is a data byte, 0xFF 0xDn a restart
            while True:
                position = data.find(b"\xff", position)
                if position < 0 or position + 1 >= len(data):
                    return False
                following = data[position + 1]
                if following == 0xFF:
                    position += 1
                elif following == 0x00 or following in JPEG_STANDALONE:
                    position += 2
                else:
                    break
    return False


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", head[21:25])[0]
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[27:30], "little") + 1, int.from_bytes(head[24:27], "little") + 1
    return None


def _tiff_size(stream, order: str) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first image file directory."""
    stream.seek(4)
    stream.seek(struct.unpack(order + "I", stream.read(4))[0])
    count = struct.unpack(order + "H", stream.read(2))[0]
    sizes = {}
    for _ in range(min(count, 4096)):
        tag, kind, _, value = struct.unpack(order + "HHI4s", stream.read(12))
        if tag in (256, 257):
            sizes[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2 if kind == 3 else 4])[0]
    return (sizes[257], sizes[256]) if len(sizes) == 2 else None
