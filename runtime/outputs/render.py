"""Output encoding and the file types a job takes, shared by the job engine, the server and
benchmarks.

Inputs are found by ``runtime.engine.inputs``; output names (an input's path below the
inputs' root, full file name kept, then a suffix from ``output_suffixes``) are made in one
place, ``runtime.engine.plan``.

Colours: a relative model's heatmap spans each image's own range (near is bright with
inferno). A metric model's spans a fixed range of metres from its description
(``colour_range``: 0 to ``max_depth``, near bright as well), so a colour means the same
distance in every photo and video frame; ``legend`` says which, and PNG heatmaps and
overlays carry it in a ``midas-onnx:legend`` text chunk (nothing is drawn on the image).

The encoding modules import in one direction: ``png`` (PNG bytes) <- ``depth_files``
(depth files) <- this module (heatmaps, overlays, ``render``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from . import png, postprocess
from .depth_files import FORMATS as DEPTH_FORMATS
from .depth_files import encode_depth
from ..errors import ImageError
from ..files import write_atomic
from ..model.model_description import OutputRule
from .png import encode_png  # noqa: F401 - public here too (the server and benchmarks encode through this module)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm"}
SUFFIXES = {"heatmap": ".heatmap.png", "overlay": ".overlay.png"}  # depth: runtime.outputs.depth_files.FORMATS
LEGEND_TEXT_KEY = "midas-onnx:legend"  # the tEXt chunk of a metric model's PNG heatmaps and overlays


def output_suffixes(depth: str | None = None, overlay: bool = False, image_format: str = "png") -> dict[str, str]:
    """kind -> suffix after the input's full name, as `heatmap` and `bulk` both name outputs.
    ``image_format`` (``IMAGE_FORMATS``) is the heatmap's and overlay's file type."""
    ext = check_image_format(image_format)
    out = {"heatmap": SUFFIXES["heatmap"].replace(".png", ext)}
    if depth and depth != "none":
        out["depth"] = DEPTH_FORMATS[depth][0]
    if overlay:
        out["overlay"] = SUFFIXES["overlay"].replace(".png", ext)
    return out


# Encoded settings per output kind. The heatmap PNG is not encoded by OpenCV but by
# ``png.encode_indexed`` (palette + levels); these parameters are for 3-channel heatmaps
# given to ``encode_png`` (a colormap's few colours along smooth gradients: PNG's row
# filters cost time there and gain nothing; 640x480 on a 2-core EPYC: zlib level 1 without
# filters 9.0 ms and 193 KB, OpenCV's default 11.0 ms and 216 KB). Overlays carry the photo,
# where the filters pay (default 13.8 ms and 393 KB; without them 20 ms and 588 KB), and so
# does the smooth 16-bit depth (``depth_files`` writes it with OpenCV's defaults).
PNG_PARAMS: dict[str, list[int]] = {
    "heatmap": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE],
    "overlay": [],
}
KINDS = ("heatmap", "overlay", "depth")  # what ``render`` makes
# Heatmap and overlay file types: format -> (extension, HTTP content type, OpenCV params).
# PNG is lossless (the default; 1080p heatmap on one core of a 2-core AMD EPYC: 6.9 ms,
# 574 KB, levels included). JPEG and WebP need the BGR heatmap first (colormap 5-7 ms), then
# JPEG at quality 90 takes 3.9 ms for 112 KB; WebP at quality 90 is the smallest (46 KB)
# but by far the slowest (about 140 ms).
IMAGE_FORMATS: dict[str, tuple[str, str, list[int]]] = {
    "png": (".png", "image/png", []),
    "jpg": (".jpg", "image/jpeg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
    "webp": (".webp", "image/webp", [cv2.IMWRITE_WEBP_QUALITY, 90]),
}


def check_image_format(image_format: str) -> str:
    """The extension of ``image_format``, or a ValueError naming the choices."""
    try:
        return IMAGE_FORMATS[image_format][0]
    except KeyError:
        raise ValueError(f"unknown image format {image_format!r}; choose from {', '.join(IMAGE_FORMATS)}") from None


def colour_range(output: OutputRule | None) -> tuple[float, float] | None:
    """The depths colormap levels 0 and 255 stand for: a metric model's ``(max_depth, 0)``
    metres (near bright, as a relative model's inverse depth is), None for a relative model
    or no rule (each image's own min-max)."""
    return (float(output.max_depth), 0.0) if output is not None and output.metric else None


def legend(output: OutputRule, colormap: str | int) -> dict | None:
    """What a metric heatmap's colours mean, for its text chunk and ``job.json``: the
    colormap's (a name or OpenCV's number) first colour, level 0, is ``level_0_m`` metres,
    its last, level 255, ``level_255_m``, linear in metres between, depths beyond clipped to
    the ends. None for a relative model, whose colours span each image's own range."""
    span = colour_range(output)
    if span is None:
        return None
    if not isinstance(colormap, str):
        colormap = next(name for name, number in postprocess.COLORMAPS.items() if number == colormap)
    return {"colormap": colormap.lower(), "unit": output.unit, "level_0_m": span[0], "level_255_m": span[1],
            "scale": "linear"}


def render(result, kind: str, image_format: str = "png", alpha: float = postprocess.DEFAULT_ALPHA) -> bytes:
    """One output of a ``DepthResult`` as file bytes: "heatmap", "overlay" (both in
    ``image_format``; ``alpha``, the heatmap's weight over the photo) or "depth" (16-bit PNG,
    see ``depth_files``). The CLI, the server and
    bulk workers all encode their outputs here. A metric model's heatmap and overlay are
    coloured over its fixed range, and as PNGs say so (``legend``)."""
    output = getattr(result, "output", None)  # a DepthResult's; results without one are relative
    span = colour_range(output)
    if kind == "depth":
        return encode_depth(result.depth, "png16", output)
    if kind == "heatmap":
        data = encode_heatmap(result.depth, result.colormap, image_format, span)
    elif kind == "overlay":
        blend = result.overlay(alpha) if span is None else postprocess.overlay(
            result.image, postprocess.colorize(result.depth, result.colormap, span), alpha)
        data = encode_image(blend, image_format, PNG_PARAMS["overlay"])
    else:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {', '.join(KINDS)}")
    if span is None or image_format != "png":
        return data
    about = legend(output, result.colormap)
    return png.with_text(data, {LEGEND_TEXT_KEY: json.dumps(about)})


def encode_heatmap(depth: np.ndarray, colormap: int, image_format: str = "png",
                   value_range: tuple[float, float] | None = None) -> bytes:
    """Depth through an OpenCV colormap (its id) as file bytes, min-max over ``value_range``
    (default: the map's own). PNG is written as an indexed image straight from the levels,
    block by block (no full-size BGR heatmap is made): ``cv2.imread`` gives back exactly
    ``postprocess.colorize(depth, colormap)``. JPEG and WebP encode that BGR heatmap."""
    check_image_format(image_format)
    if image_format != "png":
        return encode_image(postprocess.colorize(depth, colormap, value_range), image_format)
    height, width = depth.shape
    return png.encode_indexed(postprocess.level_blocks(depth, value_range), height, width,
                              postprocess.palette(colormap))


def encode_image(image: np.ndarray, image_format: str = "png", png_params: list[int] | None = None) -> bytes:
    """An 8-bit BGR image as ``image_format`` bytes (``png_params`` apply to PNG only)."""
    ext, _, params = IMAGE_FORMATS[image_format]
    if image_format == "png":
        return encode_png(image, png_params)
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise ImageError(f"{image_format} encoding failed for an array of shape {image.shape}, dtype {image.dtype}")
    return buf.tobytes()


def write_png(path: Path, image: np.ndarray) -> None:
    """PNG written atomically: an interrupted run never leaves half a file."""
    write_atomic(path, encode_png(image))
