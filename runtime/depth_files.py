"""Depth as files other programs read: float32 ``.npy``, upstream MiDaS's ``.pfm``, OpenEXR
(where OpenCV has the codec), and the normalised 16-bit PNG. The CLI, the server and bulk
all encode depth here.

``png16`` is min-max normalised per image (for viewing and compact storage); the float
formats hold ``predict().depth`` exactly, or metres after ``metric.align``.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import cv2
import numpy as np

from .errors import MidasOnnxError
from .outputs import PNG_PARAMS, encode_png
from .postprocess import depth_png16

# format -> (file suffix after the input's name, HTTP content type)
FORMATS: dict[str, tuple[str, str]] = {
    "png16": (".depth.png", "image/png"),
    "npy": (".depth.npy", "application/x-npy"),
    "pfm": (".depth.pfm", "image/x-portable-floatmap"),
    "exr": (".depth.exr", "image/x-exr"),
}


class DepthFormatError(MidasOnnxError, ValueError):
    """A depth format that cannot be written here, or a file that is not what it claims."""


def check_format(fmt: str) -> str:
    """``fmt`` if it can be written on this machine, else a clear error (EXR needs OpenCV's codec)."""
    if fmt not in FORMATS:
        raise DepthFormatError(f"unknown depth format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "exr" and not cv2.haveImageWriter(".exr"):
        raise DepthFormatError(
            "this OpenCV has no OpenEXR writer (cv2.haveImageWriter('.exr') is False). OpenCV only "
            "writes EXR when built with OpenEXR and started with OPENCV_IO_ENABLE_OPENEXR=1 in the "
            "environment; install such a build and set it, or use npy or pfm (float32, lossless)")
    return fmt


def encode_depth(depth: np.ndarray, fmt: str) -> bytes:
    """Depth (float32 HxW; NaN allowed in the float formats) as the bytes of one file."""
    check_format(fmt)
    if fmt == "png16":
        return encode_png(depth_png16(depth), PNG_PARAMS["depth"])
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, depth, allow_pickle=False)
        return buf.getvalue()
    if fmt == "pfm":
        return pfm_bytes(depth)
    ok, buf = cv2.imencode(".exr", depth)
    if not ok:
        raise DepthFormatError("OpenCV could not encode the depth as EXR")
    return buf.tobytes()


def pfm_bytes(depth: np.ndarray, scale: float = 1.0) -> bytes:
    """Grayscale PFM as upstream MiDaS's ``utils.write_pfm`` writes it: ``Pf``, ``W H``, the
    scale negated for little-endian data, then float32 rows from the bottom row up."""
    if depth.ndim != 2:
        raise DepthFormatError(f"PFM depth must be HxW, got shape {depth.shape}")
    data = np.flipud(depth.astype(np.float32, copy=False))
    little = data.dtype.byteorder == "<" or (data.dtype.byteorder == "=" and sys.byteorder == "little")
    header = b"Pf\n" + b"%d %d\n" % (data.shape[1], data.shape[0]) + b"%f\n" % (-scale if little else scale)
    return header + np.ascontiguousarray(data).tobytes()


def read_pfm(path: str | Path) -> tuple[np.ndarray, float]:
    """(data, scale) of a PFM file, as upstream MiDaS's ``utils.read_pfm`` reads it."""
    with open(path, "rb") as fh:
        header = fh.readline().rstrip()
        if header not in (b"PF", b"Pf"):
            raise DepthFormatError(f"{path}: not a PFM file (header {header[:10]!r})")
        match = re.match(rb"^(\d+)\s(\d+)\s$", fh.readline())
        if not match:
            raise DepthFormatError(f"{path}: malformed PFM header")
        width, height = int(match.group(1)), int(match.group(2))
        scale = float(fh.readline().rstrip())
        endian = "<" if scale < 0 else ">"
        data = np.fromfile(fh, endian + "f")
    shape = (height, width, 3) if header == b"PF" else (height, width)
    if data.size != int(np.prod(shape)):
        raise DepthFormatError(f"{path}: PFM data has {data.size} values, the header says {shape}")
    return np.flipud(data.reshape(shape)), abs(scale)
