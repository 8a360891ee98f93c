"""Walks over the byte structures of image files that anyone may send: a JPEG's marker
segments and a TIFF's IFD entries (EXIF is a TIFF structure), under one step budget.

The header reader (``image_header``: the pixel limit before decoding), the EXIF reader
(``exif``) and the truncation check (``images.jpeg_is_complete``) walk the same structures;
one walker for each keeps their reading of a file the same and their cost bounded the same
way: fields of fixed size at positions the file declares, each position checked against the
data before it is read, and every segment, fill byte or IFD entry visited a step of the
caller's ``Steps``, so no count or length in the file (65,535 entries, a million segments)
makes a walk longer than ``MAX_STEPS`` steps.
"""

from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

MAX_STEPS = 512  # segments, chunks, IFD entries and boxes one walk may visit, all levels together


class HeaderError(ValueError):
    """The signature is known but the header is cut short, inconsistent or too long to walk."""


class CutShort(ValueError):
    """The data ends inside a structure it declares (an IFD entry past its end)."""


class StepsSpent(Exception):
    """The walk's budget ran out: its caller refuses the file, or keeps what it found."""


class Steps:
    """One budget for a whole walk, nested levels included: a budget per level or per list
    would let a file nest lists to multiply the work."""

    def __init__(self, limit: int = MAX_STEPS) -> None:
        self.left = limit

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise StepsSpent


def jpeg_segments(data: bytes | bytearray | memoryview, steps: Steps | None) -> Iterator[tuple[int, int, int]]:
    """(marker, body start, body length) of each marker after SOI, up to and including the
    first start of scan (SOS, 0xDA): what follows it is entropy-coded data, not segments.

    Markers without a length (SOI, EOI, RSTn, TEM: libjpeg passes over them between segments)
    have a body of length 0 and the walk goes on past them, EOI included: each caller decides
    where its search ends. A length field below 2 gives a negative body length (the caller
    decides) and the walk still moves on by it. A byte other than 0xFF where a marker must
    start raises ``HeaderError``. Each marker and each fill byte (0xFF before a marker) takes a
    step of ``steps``; None for no budget, where the caller bounds the data (every step moves
    at least one byte on).
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if steps is not None:
            steps.take()
        if data[pos] != 0xFF:
            raise HeaderError("jpeg: no marker where one was expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            yield marker, pos + 2, 0
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        yield marker, pos + 4, length - 2
        if marker == 0xDA:
            return
        pos += 2 + length


class IfdEntry(NamedTuple):
    tag: int
    type: int
    count: int  # how many values of its type
    value_at: int  # its value field: the values themselves when they fit there, else their offset


# TIFF field types read: SHORT, LONG, RATIONAL (two LONGs), IFD (a LONG offset), LONG8 (BigTIFF)
_FIELDS = {3: "H", 4: "I", 5: "II", 13: "I", 16: "Q"}


def ifd_entries(data: bytes | bytearray | memoryview, offset: int, order: str, steps: Steps,
                big: bool = False) -> Iterator[IfdEntry]:
    """The entries of the IFD at ``offset`` (``order``: "<" or ">"; ``big``: BigTIFF's 8-byte
    counts and offsets), one step each. Raises ``CutShort`` at the first entry the data does
    not hold whole, and ``struct.error`` when it does not hold the entry count, so a count
    the file overstates costs no more than the entries really there."""
    count_format, entry_size, first = ("Q", 20, offset + 8) if big else ("H", 12, offset + 2)
    count = struct.unpack_from(order + count_format, data, offset)[0]
    for k in range(count):
        pos = first + k * entry_size
        if pos + entry_size > len(data):
            raise CutShort("an IFD entry lies past the end of the data")
        steps.take()
        tag, typ = struct.unpack_from(order + "HH", data, pos)
        values = struct.unpack_from(order + ("Q" if big else "I"), data, pos + 4)[0]
        yield IfdEntry(tag, typ, values, pos + (12 if big else 8))


def ifd_value(data: bytes | bytearray | memoryview, entry: IfdEntry, order: str, big: bool = False) -> float | None:
    """The first value of a SHORT, LONG, RATIONAL, IFD or LONG8 entry: in its value field when
    all its values fit there (4 bytes, BigTIFF 8), else at the offset that field holds, which
    must lie inside the data and past its 8-byte header. None for another type, an offset
    outside, or a RATIONAL over 0."""
    field = _FIELDS.get(entry.type)
    if field is None:
        return None
    size = struct.calcsize(order + field)
    at = entry.value_at
    if entry.count * size > (8 if big else 4):
        at = struct.unpack_from(order + ("Q" if big else "I"), data, at)[0]
        if not 8 <= at <= len(data) - size:
            return None
    values = struct.unpack_from(order + field, data, at)
    if entry.type == 5:
        return values[0] / values[1] if values[1] else None
    return values[0]
