"""PNG bytes: indexed (palette) PNGs written here straight from 8-bit level rows (compressed
by zlib-ng), 8- and 16-bit images through OpenCV, and text chunks that say what the pixels
mean. The lowest of the encoding modules: it imports none of them (``depth_files`` and
``outputs`` build on it).

A heatmap is a colormap's 256 colours indexed by a uint8 level image, so the PNG can hold
the levels (1 byte a pixel) and the colormap as its palette instead of 3 bytes a pixel of
BGR: OpenCV, libpng and browsers expand the palette on reading, and ``cv2.imread`` gives
back exactly the BGR image ``cv2.applyColorMap`` makes. (PIL opens it in mode "P"; its
``.convert("RGB")`` gives the same colours.)

Rows are written with PNG's "Up" filter (each row as its difference from the row above):
a heatmap is a smooth upscaled depth map, so most differences are 0 and the stream shrinks
by a third at no measurable cost (one subtraction per byte, done on each block while it is
in cache). zlib-ng's level 1 compresses these rows about 3x faster than zlib's level 1
(1080p heatmap on a 2-core AMD EPYC, AVX-512: 5.5 ms and 573 KB against 16.3 ms and
371 KB; the 3-channel PNG this replaces took 34 ms and 848 KB). Rows arrive in blocks
(``encode_indexed`` takes any iterable of row blocks), so the full-size level image need
never exist: each block is filtered and compressed as it is made.
"""

from __future__ import annotations

import struct
from typing import Iterable, Mapping

import cv2
import numpy as np
from zlib_ng import zlib_ng

from ..errors import ImageError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPE_PALETTE = 3
FILTER_UP = 2
# zlib-ng level 1 ("quick" deflate): the fastest level that still finds the runs the Up
# filter makes. Level 2 is 2x slower for 40% fewer bytes (see the module docstring).
LEVEL = 1


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib_ng.crc32(data, zlib_ng.crc32(kind)))


def palette_chunk(palette_bgr: np.ndarray) -> bytes:
    """PLTE from an (N, 3) or (N, 1, 3) uint8 BGR table, as ``cv2.applyColorMap`` orders colours."""
    table = np.asarray(palette_bgr, np.uint8).reshape(-1, 3)
    if not 1 <= len(table) <= 256:
        raise ValueError(f"a PNG palette holds 1 to 256 colours, got {len(table)}")
    return chunk(b"PLTE", np.ascontiguousarray(table[:, ::-1]).tobytes())


def encode_indexed(blocks: Iterable[np.ndarray], height: int, width: int, palette_bgr: np.ndarray,
                   level: int = LEVEL) -> bytes:
    """PNG bytes of a ``height`` x ``width`` image of palette indices.

    ``blocks``: uint8 arrays of shape (rows, width), top to bottom, ``height`` rows in all;
    each may be reused by the producer once the next is asked for (it is copied here).
    ``palette_bgr``: the colours the indices select, in BGR order.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPE_PALETTE, 0, 0, 0)
    deflate = zlib_ng.compressobj(level)
    parts: list[bytes] = []
    above = np.zeros(width, np.uint8)  # the row above the first row is zeros (PNG spec)
    rows_done = 0
    scratch = np.empty((0, width + 1), np.uint8)
    for block in blocks:
        if block.dtype != np.uint8 or block.ndim != 2 or block.shape[1] != width:
            raise ValueError(f"blocks must be uint8 (rows, {width}), got {block.dtype} {block.shape}")
        n = block.shape[0]
        if n > len(scratch):
            scratch = np.empty((n, width + 1), np.uint8)
            scratch[:, 0] = FILTER_UP
        filtered = scratch[:n]
        np.subtract(block[0], above, out=filtered[0, 1:])
        np.subtract(block[1:], block[:-1], out=filtered[1:, 1:])
        above = block[-1].copy()
        parts.append(deflate.compress(filtered))
        rows_done += n
    if rows_done != height:
        raise ValueError(f"blocks held {rows_done} rows, the header says {height}")
    parts.append(deflate.flush())
    return b"".join((SIGNATURE, chunk(b"IHDR", ihdr), palette_chunk(palette_bgr),
                     chunk(b"IDAT", b"".join(parts)), chunk(b"IEND", b"")))


def encode_png(image: np.ndarray, params: list[int] | None = None) -> bytes:
    """8- or 16-bit PNG bytes through OpenCV (``params``: its ``IMWRITE_PNG_*`` settings)."""
    ok, buf = cv2.imencode(".png", image, params or [])
    if not ok:
        raise ImageError(f"PNG encoding failed for an array of shape {image.shape}, dtype {image.dtype}")
    return buf.tobytes()


def with_text(data: bytes, text: Mapping[str, str]) -> bytes:
    """``data`` (a PNG) with a ``tEXt`` chunk per entry (keyword -> Latin-1 text) right after
    IHDR, where every reader sees them before any pixels (PIL: ``Image.open(f).text``).
    Keywords are 1 to 79 printable Latin-1 characters (the PNG specification)."""
    ihdr_end = len(SIGNATURE) + 8 + 13 + 4  # IHDR is always first, and always 13 bytes of data
    if data[:len(SIGNATURE)] != SIGNATURE or data[len(SIGNATURE) + 4:len(SIGNATURE) + 8] != b"IHDR":
        raise ValueError("not a PNG starting with its IHDR chunk")
    chunks = []
    for keyword, value in text.items():
        key = keyword.encode("latin-1")
        if not 1 <= len(key) <= 79 or not all(32 <= c <= 126 or c >= 161 for c in key):
            raise ValueError(f"a PNG text keyword is 1 to 79 printable Latin-1 characters, got {keyword!r}")
        chunks.append(chunk(b"tEXt", key + b"\0" + value.encode("latin-1")))
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]
