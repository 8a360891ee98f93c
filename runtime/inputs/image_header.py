"""Image size from the file header, before any decoding: the decompression-bomb guard's cost
estimate.

A 600 KB PNG can declare 100 megapixels; decoding it first and checking after costs seconds
of CPU and a gigabyte of memory. ``header_size`` reads only what the file declares, for every
format ``images.decode`` passes to OpenCV (its signature decides), so a bomb is refused in
microseconds. A file whose signature is none of these is refused by ``decode`` without ever
reaching a decoder, so no format escapes the check. The decoders' own limit
(``OPENCV_IO_MAX_IMAGE_PIXELS``, set from the same pixel limit) is the guard behind it.

Read as the decoders read: a TIFF's first ImageWidth/ImageLength is libtiff's, so a second
one (which a reader keeping the last would believe) is refused; a tiled TIFF's tile buffer is
allocated whole, so a tile counts as pixels (``Header.pixels``); a JPEG 2000's codestream
size (SIZ) must agree with its image header box.

Bounded work: one budget of ``MAX_STEPS`` segments, boxes or IFD entries for a whole walk
(nested boxes included), boxes looked for only in the first ``HEAD_BYTES``, fixed-size reads
otherwise, so no header costs the caller more than a few hundred microseconds whatever its
length; a file whose size is not found within them is refused.
"""

from __future__ import annotations

import re
import struct
from typing import Callable, NamedTuple

from .image_bytes import MAX_STEPS, CutShort, HeaderError, Steps, StepsSpent, ifd_entries, ifd_value, jpeg_segments

# Formats decode accepts, by name, in the order ``header_size`` tries their signatures.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WebP", "PNM/PAM", "Sun raster", "JPEG 2000", "AVIF")
# Formats whose header is read only to refuse them by name: their pixels are floating-point
# radiance or data (not a photo's 8/16-bit values), which the model's input is not.
FLOAT_FORMATS = ("Radiance HDR", "PFM", "float TIFF")
HEAD_BYTES = 256 * 1024  # boxes holding the size are looked for only this near the start


class Header(NamedTuple):
    format: str
    width: int
    height: int
    pixels: int  # what decoding allocates for, in pixels: the image, or one tile when larger


def header_size(data: bytes | bytearray | memoryview) -> Header | None:
    """What the header declares; None when no known signature matches. Raises
    ``HeaderError`` for a known signature with a broken, ambiguous or endless header."""
    head = bytes(data[:16])
    for test, reader, name in _READERS:
        if test(head):
            try:
                fmt, width, height, *tile = reader(data, Steps())
            except HeaderError:
                raise
            except StepsSpent:
                raise HeaderError(f"{name}: more than {MAX_STEPS} segments or boxes before the image size; "
                                  "refused") from None
            except (struct.error, IndexError, ValueError):
                raise HeaderError(f"{name}: header is cut short or malformed") from None
            return Header(fmt, width, height, max(width * height, tile[0] * tile[1] if tile else 0))
    return None


def _u16(data, pos: int, fmt: str = ">H") -> int:
    return struct.unpack_from(fmt, data, pos)[0]


def _jpeg(data, steps: Steps) -> tuple[str, int, int]:
    for marker, body, _ in jpeg_segments(data, steps):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack_from(">HH", data, body + 1)
            return "JPEG", width, height
    raise HeaderError("jpeg: no frame header (SOF) before the image data")  # the scan, or the end, came first


def _png(data, steps: Steps) -> tuple[str, int, int]:
    if bytes(data[12:16]) != b"IHDR":
        raise HeaderError("png: first chunk is not IHDR")
    width, height = struct.unpack_from(">II", data, 16)
    return "PNG", width, height


def _gif(data, steps: Steps) -> tuple[str, int, int]:
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    after = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # past the global colour table
    if data[after] not in (0x21, 0x2C, 0x3B):
        raise HeaderError("gif: no extension, image or trailer block after the header")
    return "GIF", width, height


def _bmp(data, steps: Steps) -> tuple[str, int, int]:
    dib = struct.unpack_from("<I", data, 14)[0]
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return "BMP", abs(width), abs(height)


# TIFF tags read: ImageWidth, ImageLength, TileWidth, TileLength, SampleFormat
_TIFF_TAGS = {256: "width", 257: "length", 322: "tile width", 323: "tile length", 339: "sample format"}


def _tiff(data, steps: Steps) -> tuple[str, int, int, int, int]:
    """The first image's size and tile size, each tag at most once (libtiff reads the first
    of a repeated tag, another reader the last: a file declaring both is refused)."""
    order = "<" if bytes(data[:2]) == b"II" else ">"
    big = _u16(data, 2, order + "H") == 43
    offset = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    found: dict[int, int] = {}
    for entry in ifd_entries(data, offset, order, steps, big):
        if entry.tag not in _TIFF_TAGS:
            continue
        if entry.tag in found:
            raise HeaderError(f"tiff: the image {_TIFF_TAGS[entry.tag]} is declared twice; refused (decoders "
                              "disagree on which one counts)")
        if entry.type not in (3, 4, 16):  # SHORT, LONG, LONG8
            raise HeaderError(f"tiff: image {_TIFF_TAGS[entry.tag]} tag of type {entry.type}")
        value = ifd_value(data, entry, order, big)
        if value is None:
            raise CutShort(f"tiff: image {_TIFF_TAGS[entry.tag]} value outside the file")
        found[entry.tag] = value
    if 256 not in found or 257 not in found:
        raise HeaderError("tiff: first image has no width or length tag")
    fmt = "float TIFF" if found.get(339) == 3 else "TIFF"  # SampleFormat 3: IEEE floating point
    return fmt, found[256], found[257], found.get(322, 0), found.get(323, 0)


def _webp(data, steps: Steps) -> tuple[str, int, int]:
    chunk = bytes(data[12:16])
    if chunk == b"VP8 ":
        if bytes(data[23:26]) != b"\x9d\x01\x2a":
            raise HeaderError("webp: bad VP8 start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return "WebP", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack_from("<I", data, 21)[0]
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return "WebP", width, height
    raise HeaderError(f"webp: unknown first chunk {chunk!r}")


_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n)*([^\s#]+)")


def _pnm(data, steps: Steps) -> tuple[str, int, int]:
    head = bytes(data[:4096])
    if head[:2] == b"P7":  # PAM: KEY VALUE lines up to ENDHDR
        fields = dict(re.findall(rb"^(WIDTH|HEIGHT)\s+(\d+)", head.split(b"ENDHDR")[0], re.M))
        if b"WIDTH" not in fields or b"HEIGHT" not in fields:
            raise HeaderError("pam: no WIDTH or HEIGHT before ENDHDR")
        return "PAM", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    pos, values = 2, []
    for _ in range(2):
        m = _TOKEN.match(head, pos)
        if m is None or not m.group(1).isdigit():
            raise HeaderError("pnm: width and height must follow the magic number")
        values.append(int(m.group(1)))
        pos = m.end()
    return ("PFM" if head[1:2] in (b"F", b"f") else "PNM"), values[0], values[1]


def _sun(data, steps: Steps) -> tuple[str, int, int]:
    width, height = struct.unpack_from(">II", data, 4)
    return "Sun raster", width, height


def _hdr(data, steps: Steps) -> tuple[str, int, int]:
    head = bytes(data[:8192])
    blank = head.find(b"\n\n")
    if blank < 0:
        raise HeaderError("hdr: no end of header within 8 KB")
    line = head[blank + 2:].split(b"\n", 1)[0]
    m = re.fullmatch(rb"\s*[-+][YX]\s+(\d+)\s+[-+][YX]\s+(\d+)\s*", line)
    if m is None:
        raise HeaderError("hdr: bad resolution line")
    first, second = int(m.group(1)), int(m.group(2))  # "-Y rows +X columns" in the usual order
    if line.strip()[1:2] == b"Y":
        first, second = second, first
    return "Radiance HDR", first, second


def _boxes(data, start: int, stop: int, steps: Steps, what: str):
    """(type, payload start, box end) of ISO base media boxes between start and stop that
    begin within the first HEAD_BYTES, each a step of the walk."""
    pos = start
    while pos + 8 <= min(stop, HEAD_BYTES):
        steps.take()
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = stop - pos
        if size < head:
            raise HeaderError(f"{what}: box with an impossible size")
        yield kind, pos + head, min(pos + size, stop)
        pos += size


def _siz(data, at: int) -> tuple[int, int]:
    """A JPEG 2000 codestream's image size from its SIZ marker segment at ``at``."""
    if bytes(data[at:at + 4]) != b"\xff\x4f\xff\x51":
        raise HeaderError("jpeg 2000: codestream does not start with SOC and SIZ")
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, at + 8)
    if xo >= xsiz or yo >= ysiz:
        raise HeaderError("jpeg 2000: image offset beyond its size")
    return xsiz - xo, ysiz - yo


def _jp2(data, steps: Steps) -> tuple[str, int, int]:
    """The codestream's size (SIZ: what the decoder allocates); in a JP2 file, its image
    header box (ihdr) must say the same."""
    if bytes(data[:4]) == b"\xff\x4f\xff\x51":  # raw codestream
        return ("JPEG 2000", *_siz(data, 0))
    declared = None
    for kind, at, end in _boxes(data, 0, len(data), steps, "jpeg 2000"):
        if kind == b"jp2h":
            for sub, sat, _ in _boxes(data, at, end, steps, "jpeg 2000"):
                if sub == b"ihdr":
                    height, width = struct.unpack_from(">II", data, sat)
                    declared = (width, height)
        elif kind == b"jp2c":
            if declared is None:
                raise HeaderError("jpeg 2000: codestream before the image header box (ihdr)")
            size = _siz(data, at)
            if size != declared:
                raise HeaderError(f"jpeg 2000: image header box says {declared[0]}x{declared[1]}, codestream "
                                  f"{size[0]}x{size[1]}")
            return ("JPEG 2000", *size)
    raise HeaderError("jpeg 2000: no image header box (ihdr) and codestream near the start")


def _avif(data, steps: Steps) -> tuple[str, int, int]:
    """The largest image spatial extent ('ispe') in the meta box: the primary image, a grid's
    full size, or an auxiliary image, whichever is largest."""
    best: tuple[int, int] | None = None

    def walk(start: int, stop: int, depth: int) -> None:
        nonlocal best
        for kind, at, end in _boxes(data, start, stop, steps, "avif"):
            if kind == b"ispe":
                width, height = struct.unpack_from(">II", data, at + 4)
                if best is None or width * height > best[0] * best[1]:
                    best = (width, height)
            elif kind in (b"meta", b"iprp", b"ipco") and depth < 4:
                walk(at + (4 if kind == b"meta" else 0), end, depth + 1)

    walk(0, len(data), 0)
    if best is None:
        raise HeaderError("avif: no image size property (ispe) near the start")
    return "AVIF", best[0], best[1]


def _is_pnm(h: bytes) -> bool:
    return h[:1] == b"P" and h[1:2] in b"1234567Ff" and h[2:3] in b" \t\r\n#"


# (signature test, reader, the format's name in its errors), in the order header_size tries them
_READERS: tuple[tuple[Callable[[bytes], bool], Callable, str], ...] = (
    (lambda h: h[:3] == b"\xff\xd8\xff", _jpeg, "jpeg"),
    (lambda h: h[:8] == b"\x89PNG\r\n\x1a\n", _png, "png"),
    (lambda h: h[:6] in (b"GIF87a", b"GIF89a"), _gif, "gif"),
    (lambda h: h[:2] == b"BM", _bmp, "bmp"),
    (lambda h: h[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff, "tiff"),
    (lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", _webp, "webp"),
    (_is_pnm, _pnm, "pnm"),
    (lambda h: h[:4] == b"\x59\xa6\x6a\x95", _sun, "sun"),
    (lambda h: h[:2] == b"#?", _hdr, "hdr"),
    (lambda h: h[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or h[:4] == b"\xff\x4f\xff\x51", _jp2, "jpeg 2000"),
    (lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"avif", b"avis", b"mif1", b"miaf"), _avif, "avif"),
)
