"""Decoding and normalising input images: every accepted form becomes float32 RGB in [0, 1].

Accepted: file paths, encoded bytes (JPEG, PNG, GIF, BMP, TIFF, WebP, PNM/PAM, Sun raster,
JPEG 2000, AVIF: the formats whose header ``image_header`` reads, so the pixel limit holds
before any decode; floating-point files, Radiance HDR, PFM and float TIFF, are refused by
name from their header: their values are radiance or data, not a photo's),
and numpy arrays that are grayscale (HxW or HxWx1), 3-channel (BGR or RGB, as the caller
says) or 4-channel (alpha dropped), of dtype uint8, uint16, or float in [0, 1]. Files are
decoded as an image viewer shows them: EXIF orientation applied, 16-bit kept at 16 bits.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np

from ..errors import ImageError, ImageTooLarge
from .image_bytes import jpeg_segments
from .image_header import FLOAT_FORMATS, HeaderError, header_size
from .image_header import FORMATS as HEADER_FORMATS



def _max_pixels_from_env() -> int:
    """``MIDAS_ONNX_MAX_PIXELS``, else 100 MP. A value that is not a whole number above 0 ends
    the process with one line, whoever imports this: the limit guards against bombs, so no
    looser default may stand in for what the user meant."""
    text = os.environ.get("MIDAS_ONNX_MAX_PIXELS", "").strip()
    if not text:
        return 100_000_000
    if not (text.isdigit() and int(text) > 0):
        raise SystemExit(f"error: MIDAS_ONNX_MAX_PIXELS={text!r}: must be a whole number of pixels above 0 "
                         "(e.g. 100000000)")
    return int(text)


# Decompression-bomb guard: refuse images above this many pixels (100 MP: a 12,000 x 8,000
# photo still passes). ``check_header`` applies the caller's limit (DepthHeatmapper's
# max_pixels, serve's --max-pixels) from the file header before decoding; OpenCV's own
# process-wide limit is set to the default too (unless set already: serve sets it to its own
# --max-pixels), as the guard behind it: each decoder refuses from its own header.
MAX_PIXELS = _max_pixels_from_env()
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
# FFmpeg (behind cv2.VideoCapture) prints its decoder complaints straight to stderr, before
# and around our own one-line error; quiet it (AV_LOG_QUIET) unless the user set a level.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402  (must follow the environment set-up above)

ImageInput = Union[str, Path, bytes, bytearray, memoryview, np.ndarray]
# IMREAD_COLOR applies EXIF orientation and gives 3 channels; ANYDEPTH keeps 16-bit data.
_DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH


def decode(data: bytes | bytearray | memoryview, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> BGR array (uint8 or uint16), or an ImageError naming ``name``."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageError(f"{name}: empty file")
    if buf[:3].tobytes() == b"\xff\xd8\xff" and not jpeg_is_complete(data):
        # libjpeg decodes a cut-off JPEG "successfully" with grey rows and a stderr warning.
        raise ImageError(f"{name}: truncated JPEG (no end-of-image marker); the file is incomplete")
    check_header(data, name, max_pixels)
    try:
        image = cv2.imdecode(buf, _DECODE_FLAGS)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise ImageTooLarge(f"{name}: image exceeds the pixel limit ({max_pixels:,} pixels); refused") from None
        raise ImageError(f"{name}: cannot be decoded as an image ({str(exc).strip().splitlines()[-1][:200]})") from None
    if image is None:
        raise ImageError(f"{name}: not a decodable image (unknown format, corrupt or truncated)")
    check_pixels(image, name, max_pixels)
    return image


# In entropy-coded data a 0xFF byte is followed by 0x00 (stuffing), a restart marker
# (0xD0-0xD7) or more 0xFF fill; any other byte after 0xFF is a marker.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_is_complete(data: bytes | bytearray | memoryview) -> bool:
    """True when the JPEG's image data reaches its end-of-image marker (EOI).

    Walks the segments to the first start-of-scan, then scans for the next marker, skipping
    any segments between the scans of a progressive JPEG, until EOI. Data *after* EOI is
    allowed: phones append a video (Motion Photos), cameras pad with zeros, and the photo is
    complete. Thumbnails in the EXIF segment carry their own EOI, which is never mistaken
    for the main image's: segments before the first scan are skipped by their lengths. The
    walk has no step budget: each step moves on at least a byte of data its caller holds.
    """
    try:
        for marker, body, size in jpeg_segments(data, None):
            if marker == 0xD9:
                return True
            if marker == 0xDA:  # start of scan: entropy-coded data follows
                return _scan_reaches_eoi(data, body + size)
    except HeaderError:  # no marker where one must be
        return False
    return False


def _scan_reaches_eoi(data: bytes | bytearray | memoryview, pos: int) -> bool:
    """Whether the entropy-coded data from ``pos`` reaches EOI, segments between scans skipped."""
    n = len(data)
    while (m := _MARKER.search(data, pos)) is not None:
        if data[m.start() + 1] == 0xD9:
            return True
        if m.start() + 4 > n:
            return False
        pos = m.start() + 2 + int.from_bytes(data[m.start() + 2:m.start() + 4], "big")
    return False


def read(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read and decode a file; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return decode(data, str(path), max_pixels)


def check_header(data: bytes | bytearray | memoryview, name: str, max_pixels: int) -> int:
    """The pixels decoding the file allocates for, as its header declares them; refuses,
    from the header alone, a file above ``max_pixels`` (its image, or one tile of it), of a
    floating-point format, or of a format whose header is not read (so no format reaches the
    decoder unchecked). Costs at most a few hundred microseconds (runtime.inputs.image_header), no
    pixels."""
    try:
        found = header_size(data)
    except HeaderError as exc:
        raise ImageError(f"{name}: not a decodable image ({exc})") from None
    if found is None:
        raise ImageError(f"{name}: not a decodable image (unknown format; accepted: {', '.join(HEADER_FORMATS)})")
    fmt, width, height, pixels = found
    if fmt in FLOAT_FORMATS:
        raise ImageError(f"{name}: {fmt} files hold floating-point values (radiance or data), not a photo's "
                         "pixels; they are not accepted: convert to an 8- or 16-bit PNG, TIFF or JPEG first")
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: {fmt} header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{name}: {fmt} header declares {width}x{height} ({width * height:,} pixels): exceeds the pixel "
            f"limit ({max_pixels:,} pixels); refused before decoding (decompression-bomb guard)")
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"{name}: {fmt} header declares tiles of {pixels:,} pixels for a {width}x{height} image: exceeds the "
            f"pixel limit ({max_pixels:,} pixels); refused before decoding (decompression-bomb guard)")
    return pixels


def check_pixels(image: np.ndarray, name: str, max_pixels: int) -> None:
    pixels = int(image.shape[0]) * int(image.shape[1]) if image.ndim >= 2 else 0
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"{name}: {image.shape[1]}x{image.shape[0]} is {pixels:,} pixels, above the limit "
            f"of {max_pixels:,}; refused (decompression-bomb guard)"
        )


class Loaded(NamedTuple):
    """A validated image as it was decoded or given: no float copy is made of it.

    pixels: HxW, HxWx3 or HxWx4; uint8, uint16, or float32/float64 in [0, 1].
    order: channel order of 3/4-channel pixels ("bgr" or "rgb").
    """

    pixels: np.ndarray
    order: str
    name: str


def load(image: ImageInput, order: str = "bgr", max_pixels: int = MAX_PIXELS, name: str = "image") -> Loaded:
    """Any accepted input -> its pixels, checked (layout, dtype, range, size), not converted.

    ``order`` says how a 3/4-channel *array* is laid out ("bgr" as OpenCV gives it, or
    "rgb" as PIL/scikit-image give it); decoded files are always handled correctly.
    """
    if isinstance(image, Loaded):
        return image
    if isinstance(image, (str, Path)):
        name, image, order = str(image), read(image, max_pixels), "bgr"
    elif isinstance(image, (bytes, bytearray, memoryview)):
        image, order = decode(image, name, max_pixels), "bgr"
    elif not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a path, bytes or numpy array, got {type(image).__name__}")
    if order not in ("bgr", "rgb"):
        raise ValueError(f"order must be 'bgr' or 'rgb', got {order!r}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageError(
            f"{name}: unsupported array shape {image.shape}; expected HxW, HxWx1, HxWx3 or HxWx4"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: empty image (shape {image.shape})")
    check_pixels(image, name, max_pixels)
    _check_values(image, name)
    return Loaded(image, order, name)


def _check_values(image: np.ndarray, name: str) -> None:
    """uint8 and uint16 are taken as they are; float arrays must be finite and in [0, 1]
    (min and max see NaN and infinity, and need no full-size temporary)."""
    if image.dtype in (np.uint8, np.uint16):
        return
    if image.dtype in (np.float32, np.float64, np.float16):
        lo, hi = float(image.min()), float(image.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ImageError(f"{name}: float image contains NaN or infinity")
        if lo < 0.0 or hi > 1.0:
            raise ImageError(f"{name}: float images must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
        return
    raise ImageError(f"{name}: unsupported dtype {image.dtype}; use uint8, uint16 or float in [0, 1]")


def to_bgr8(image: Loaded) -> np.ndarray:
    """The input as uint8 BGR, for overlays drawn on it; uint8 BGR input is returned as is."""
    pixels = image.pixels
    if pixels.dtype == np.uint16:
        pixels = cv2.convertScaleAbs(pixels, alpha=1 / 257)
    elif pixels.dtype != np.uint8:
        pixels = cv2.convertScaleAbs(pixels.astype(np.float32, copy=False), alpha=255.0)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR if image.order == "bgr" else cv2.COLOR_RGBA2BGR)
    return pixels if image.order == "bgr" else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
