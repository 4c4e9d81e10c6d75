"""Why an MP4 or QuickTime file does not open, read from its top-level boxes: OpenCV (FFmpeg) says only that it
failed. A recorder writes the file's index (the ``moov`` box) when it stops, after the frames (``mdat``) unless it
was told to put it first; a recording that was killed, or a copy cut short, lacks it, and no player reads the file
as it is."""
from __future__ import annotations

import os
import struct
from pathlib import Path

FIRST_BOXES = {b"ftyp", b"wide", b"free", b"skip", b"mdat", b"moov", b"pnot"}  # how such a file starts
MAX_BOXES = 100_000  # top-level boxes walked; a fragmented MP4 has two per fragment


def mp4_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the MP4/QuickTime file ``path``: empty, cut short inside a box, or without its index.
    None when its boxes are whole and indexed, or when it is not such a file."""
    with open(Path(path), "rb") as stream:
        size = stream.seek(0, os.SEEK_END)
        if size == 0:
            return "it is empty (0 bytes)"
        position, kinds, cut = 0, set(), None
        for _ in range(MAX_BOXES):
            if position + 8 > size:
                break
            stream.seek(position)
            length, kind = struct.unpack(">I4s", stream.read(8))
            if position == 0 and kind not in FIRST_BOXES:
                return None
            if length == 1:  # a 64-bit size follows the type
                extended = stream.read(8)
                length = struct.unpack(">Q", extended)[0] if len(extended) == 8 else 0
            elif length == 0:  # the box runs to the end of the file
                length = size - position
            if length < 8:
                return None  # not a box structure this walk understands: the decoder judges the file
            kinds.add(kind)
            if position + length > size:
                cut = f"it ends inside its '{kind.decode('latin-1')}' box (at byte {size:,} of {position + length:,})"
                break
            position += length
    no_index = "no index (the 'moov' box, which a recorder writes when it stops)"
    if b"moov" not in kinds:
        return f"{cut} and has {no_index}: a cut-short copy or an unfinished recording" if cut else \
            f"it has {no_index}: an unfinished recording"
    return f"{cut}: a cut-short copy" if cut else None
