"""Depth as files other programs read: float32 ``.npy``, upstream MiDaS's ``.pfm``, OpenEXR
(where OpenCV has the codec), and the 16-bit PNG. The CLI, the server and bulk all encode
depth here.

The float formats hold the depth exactly: ``predict().depth`` (relative inverse depth, or a
metric model's metres), or metres after ``metric.align``. ``png16`` holds levels 0..65535
(``png16_range`` gives the range they span, ``depth = lo + value / 65535 * (hi - lo)``):
for a relative model, that image's own min-max of inverse depth (65535 = nearest; for
viewing and compact storage); for a metric model, metres over its fixed range 0 to
``max_depth`` (``metres = value / 65535 * max_depth``, larger is farther, 0 = no depth), the
same scale for every photo and frame, said in the PNG's ``midas-onnx:depth`` text chunk.

Imports ``png`` and ``postprocess`` only: ``outputs`` builds on this module, never the reverse.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np

from ..errors import MidasOnnxError
from ..model.model_description import OutputRule
from .png import encode_png, with_text
from .postprocess import depth_png16, depth_range, to_levels

PNG16_TOP = 65535  # postprocess.depth_png16's top level too
DEPTH_TEXT_KEY = "midas-onnx:depth"  # the tEXt chunk of a metric png16 depth file
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


def png16_range(depth: np.ndarray, output: OutputRule | None = None) -> tuple[float, float]:
    """(lo, hi): the depths png16 levels 0 and 65535 stand for. A metric model's fixed
    0..max_depth metres; else (relative inverse depth, or no ``output``) the map's own range."""
    if output is not None and output.metric:
        return 0.0, float(output.max_depth)
    return depth_range(depth)


def encode_depth(depth: np.ndarray, fmt: str, output: OutputRule | None = None) -> bytes:
    """Depth (float32 HxW; NaN allowed in the float formats) as the bytes of one file.
    ``output`` (the model's output rule, ``DepthResult.output``) decides what png16 holds:
    see the module's docstring. The float formats hold ``depth`` as it is."""
    check_format(fmt)
    if fmt == "png16":
        if output is None or not output.metric:
            return encode_png(depth_png16(depth))
        lo, hi = png16_range(depth, output)
        if np.isnan(depth.min()):  # no depth: level 0 (a copy only then; min makes no temporary)
            depth = np.nan_to_num(depth, nan=lo)
        levels = to_levels(depth, PNG16_TOP, np.uint16, (lo, hi))  # clipped to the range
        note = {"unit": output.unit, "range_m": [lo, hi], "metres": f"value / {PNG16_TOP} * {hi:g}", "no_depth": 0}
        return with_text(encode_png(levels), {DEPTH_TEXT_KEY: json.dumps(note)})
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
