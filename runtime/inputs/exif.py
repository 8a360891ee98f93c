"""The camera tags of a photo's EXIF, for point-cloud intrinsics: focal length (real and 35 mm
equivalent), focal-plane resolution, the pixel size they refer to, and orientation.

OpenCV reads EXIF only to turn photos upright and does not give its tags; the base install
has no EXIF library (Pillow reads them, but is not a dependency of the torch-free runtime),
so this is a small reader of the few tags needed, and nothing else.

EXIF is a TIFF structure (byte order, then IFDs of 12-byte entries) carried in a JPEG's APP1
segment, a PNG's ``eXIf`` chunk, a WebP's ``EXIF`` chunk, or a TIFF file itself. It comes
from files anyone may send, so every read is bounded and nothing in it raises:

- only the first ``HEAD_BYTES`` of the file are looked at (a JPEG's APP1 is at most 64 KB
  and comes first);
- one budget of ``MAX_STEPS`` for every segment, chunk and IFD entry visited, all levels
  together, so no count in the file (65,535 entries, a million chunks) costs more;
- two IFDs at most, IFD0 and the Exif IFD it points to, and no "next IFD" link followed, so
  offsets that point back at each other cannot loop;
- a tag is taken only as one value of its own type whose bytes lie inside the block;
  anything else (cut short, out of range, zero denominators, huge counts) is left out.

``camera(data)`` gives a ``Camera`` (None without EXIF or when nothing is readable); the
intrinsics are worked out from it in ``runtime.outputs.pointcloud.Intrinsics.from_exif``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from .image_bytes import MAX_STEPS, CutShort, StepsSpent, ifd_entries, ifd_value, jpeg_segments
from .image_bytes import Steps as _Steps

HEAD_BYTES = 256 * 1024
# FocalPlaneResolutionUnit -> millimetres per unit (1 is "no absolute unit": unusable)
UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
_EXIF_HEADER = b"Exif\x00\x00"
# tag -> (Camera field, EXIF type codes accepted): SHORT 3, LONG 4, RATIONAL 5
_TAGS = {
    0x0112: ("orientation", (3,)),
    0x920A: ("focal_length_mm", (5,)),
    0xA405: ("focal_35mm", (3,)),
    0xA20E: ("focal_plane_x", (5,)),
    0xA20F: ("focal_plane_y", (5,)),
    0xA210: ("focal_plane_unit", (3,)),
    0xA002: ("pixel_width", (3, 4)),
    0xA003: ("pixel_height", (3, 4)),
}
_EXIF_IFD = 0x8769


@dataclass(frozen=True)
class Camera:
    """What a photo's EXIF says about its camera; None where it says nothing usable.

    focal_length_mm: the lens's real focal length. focal_35mm: its 35 mm film equivalent.
    focal_plane_x/_y: sensor pixels per ``focal_plane_unit_mm`` across/down, for the image
    ``pixel_width`` x ``pixel_height`` (as stored, before ``orientation`` turns it upright).
    """

    focal_length_mm: float | None = None
    focal_35mm: float | None = None
    focal_plane_x: float | None = None
    focal_plane_y: float | None = None
    focal_plane_unit_mm: float | None = None
    pixel_width: int | None = None
    pixel_height: int | None = None
    orientation: int = 1


def read_head(path: str | Path) -> bytes:
    """The first ``HEAD_BYTES`` of a file (empty if it cannot be read: no EXIF, not an error)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(HEAD_BYTES)
    except OSError:
        return b""


def camera(data: bytes | bytearray | memoryview) -> Camera | None:
    """The camera tags of an image file's EXIF (its first ``HEAD_BYTES`` are enough), or
    None when it has no EXIF or none of the tags could be read. Never raises on bad data."""
    head = bytes(memoryview(data)[:HEAD_BYTES])
    steps = _Steps()
    try:
        block = exif_block(head, steps)
        return None if block is None else _read_tiff(block, steps)
    except (StepsSpent, struct.error, IndexError, ValueError):
        return None


def exif_block(head: bytes, steps: _Steps | None = None) -> bytes | None:
    """The EXIF TIFF structure of a JPEG, PNG, WebP or TIFF file's head, else None."""
    steps = steps or _Steps()
    if head[:2] == b"\xff\xd8":
        block = _jpeg_app1(head, steps)
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        block = _chunks(head, 8, ">I", b"eXIf", steps, stop=b"IEND")
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        block = _chunks(head, 12, "<I", b"EXIF", steps)
    elif head[:4] in (b"II*\x00", b"MM\x00*"):
        block = head
    else:
        return None
    if block is not None and block.startswith(_EXIF_HEADER):  # some PNG and WebP writers keep JPEG's prefix
        block = block[len(_EXIF_HEADER):]
    return block


def _jpeg_app1(head: bytes, steps: _Steps) -> bytes | None:
    """The first APP1 segment holding EXIF, looked for up to the image data (or the end)."""
    try:
        for marker, body, size in jpeg_segments(head, steps):
            if marker in (0xDA, 0xD9) or size < 0:  # image data, the end, or a broken length: no EXIF
                return None
            if marker == 0xE1 and (segment := head[body:body + size]).startswith(_EXIF_HEADER):
                return segment
    except ValueError:  # no marker where one must be
        return None
    return None


def _chunks(head: bytes, pos: int, size_format: str, wanted: bytes, steps: _Steps, stop: bytes = b"") -> bytes | None:
    """The body of the first ``wanted`` chunk: PNG (big-endian length, type, body, CRC) or
    RIFF (type, little-endian length, body padded to an even length)."""
    png = size_format == ">I"
    while pos + 8 <= len(head):
        steps.take()
        if png:
            size, kind = struct.unpack_from(">I", head, pos)[0], head[pos + 4:pos + 8]
        else:
            kind, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if kind == wanted:
            body = head[pos + 8:pos + 8 + size]
            return body if len(body) == size else None  # cut short by the head: not read
        if kind == stop:
            return None
        pos += 8 + size + (4 if png else size & 1)
    return None


def _read_tiff(block: bytes, steps: _Steps) -> Camera | None:
    """The tags of IFD0 and of the Exif IFD it points to (the Exif IFD's win)."""
    if block[:2] not in (b"II", b"MM"):
        return None
    order = "<" if block[:2] == b"II" else ">"
    if struct.unpack_from(order + "H", block, 2)[0] != 42:
        return None
    first = struct.unpack_from(order + "I", block, 4)[0]
    found: dict[str, float] = {}
    try:
        pointer = _read_ifd(block, first, order, found, steps)
    except StepsSpent:  # what was read before the budget ran out still counts
        return _camera(found)
    if pointer is not None and pointer != first:
        exif: dict[str, float] = {}
        try:
            _read_ifd(block, pointer, order, exif, steps)
        except StepsSpent:
            pass
        found.update(exif)
    return _camera(found)


def _read_ifd(block: bytes, offset: int, order: str, found: dict, steps: _Steps) -> int | None:
    """Reads the wanted tags of the IFD at ``offset`` into ``found``; returns the Exif IFD's
    offset if this IFD points to one. Entries past the block's end are not read."""
    if not 8 <= offset <= len(block) - 2:
        return None
    pointer = None
    try:
        for entry in ifd_entries(block, offset, order, steps):
            if entry.count != 1:
                continue
            if entry.tag == _EXIF_IFD:
                if entry.type in (4, 13):  # LONG, or IFD
                    pointer = ifd_value(block, entry, order)
            elif entry.tag in _TAGS and entry.type in _TAGS[entry.tag][1]:
                value = ifd_value(block, entry, order)
                if value is not None:
                    found[_TAGS[entry.tag][0]] = value
    except CutShort:  # entries past the block's end are not read
        pass
    return pointer


def _camera(found: dict) -> Camera | None:
    """Usable values only: positive and finite; a unit EXIF defines. None when nothing was read."""
    if not found:
        return None

    def positive(name: str) -> float | None:
        value = found.get(name)
        return float(value) if value is not None and math.isfinite(value) and value > 0 else None

    def count(name: str) -> int | None:
        value = positive(name)
        return int(value) if value is not None else None

    return Camera(
        focal_length_mm=positive("focal_length_mm"), focal_35mm=positive("focal_35mm"),
        focal_plane_x=positive("focal_plane_x"), focal_plane_y=positive("focal_plane_y"),
        focal_plane_unit_mm=UNIT_MM.get(int(found.get("focal_plane_unit", 2))),  # EXIF's default unit: inches
        pixel_width=count("pixel_width"), pixel_height=count("pixel_height"),
        orientation=int(found["orientation"]) if found.get("orientation") in range(1, 9) else 1,
    )
