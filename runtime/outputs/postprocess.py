"""From network output to what people look at: depth at the input's size, colour heatmaps,
overlays and 16-bit depth PNGs. A relative model's output is *inverse* depth: larger is
nearer, so with a dark-to-bright colormap near objects are bright.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..model.model_description import MIDAS_SMALL, OUTPUT_RESIZES

DEFAULT_COLORMAP = "inferno"
DEFAULT_ALPHA = 0.5  # an overlay's heatmap weight over the photo
COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}


def colormap_id(name: str) -> int:
    """OpenCV colormap constant for a case-insensitive name ("inferno", "turbo", ...)."""
    try:
        return COLORMAPS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; choose from {', '.join(sorted(COLORMAPS))}") from None


def resize_depth(depth: np.ndarray, height: int, width: int, method: str = MIDAS_SMALL.output.resize) -> np.ndarray:
    """Network-size depth -> input size, as the model's upstream pipeline does it
    (``OutputRule.resize``): ``bicubic`` as MiDaS's ``F.interpolate(mode="bicubic")``,
    ``bilinear_align_corners`` as Depth Anything V2's ``F.interpolate(mode="bilinear",
    align_corners=True)``."""
    if method not in OUTPUT_RESIZES:
        raise ValueError(f"unknown depth resize {method!r}; known: {', '.join(OUTPUT_RESIZES)}")
    if depth.shape == (height, width):
        return depth.astype(np.float32, copy=False)
    if method == "bicubic":
        return cv2.resize(depth, (width, height), interpolation=cv2.INTER_CUBIC)
    return _bilinear_align_corners(depth.astype(np.float32, copy=False), height, width)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and float32 weights of ``align_corners=True`` linear resampling from ``src`` to
    ``dst`` samples, computed as torch's CPU kernel does: ``x = i * (src - 1) / (dst - 1)``."""
    scale = np.float32((src - 1) / (dst - 1)) if dst > 1 else np.float32(0)
    pos = scale * np.arange(dst, dtype=np.float32)
    first = np.minimum(pos.astype(np.int64), src - 1)  # floor: positions are never negative
    second = np.minimum(first + 1, src - 1)
    w_second = (pos - first).astype(np.float32)
    return first, second, np.float32(1) - w_second, w_second


def _bilinear_align_corners(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear with aligned corners, horizontal pass first on the small map, then the
    vertical one a block of output rows at a time into the result (torch's order and float32
    arithmetic: within a float32 rounding of its output). OpenCV has no aligned-corner mode,
    and its remap quantises the weights to 1/32."""
    y0, y1, wy0, wy1 = _linear_taps(depth.shape[0], height)
    x0, x1, wx0, wx1 = _linear_taps(depth.shape[1], width)
    rows = depth[:, x0] * wx0
    rows += depth[:, x1] * wx1  # (network height) x width
    out = np.empty((height, width), np.float32)
    step = block_rows(width)
    scratch = np.empty((min(step, height), width), np.float32)
    for top in range(0, height, step):
        block = slice(top, min(top + step, height))
        part, tmp = out[block], scratch[:block.stop - top]
        np.multiply(rows[y0[block]], wy0[block, None], out=part)  # (np.take with out= is 5x slower)
        np.multiply(rows[y1[block]], wy1[block, None], out=tmp)
        part += tmp
    return out


# Pixels per block when mapping full-size depth to levels: the float scratch (1 MB) stays
# in cache between the five passes over it, and per-block overhead stays small.
_BLOCK_PIXELS = 1 << 18


def depth_range(depth: np.ndarray) -> tuple[float, float]:
    """(lo, hi) for min-max normalisation; a constant map gives hi == lo (all levels 0)."""
    return _flat_to_point(float(depth.min()), float(depth.max()))


def _flat_to_point(lo: float, hi: float) -> tuple[float, float]:
    """A range too narrow to divide by becomes (lo, lo): one colour, never a division by zero."""
    return (lo, hi) if hi - lo > 1e-12 * max(1.0, abs(hi)) else (lo, lo)


def normalise(depth: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros instead of dividing by zero."""
    lo, hi = depth_range(depth)
    if hi == lo:
        return np.zeros(depth.shape, dtype=np.float32)
    return ((depth - lo) / (hi - lo)).astype(np.float32)


def block_rows(width: int) -> int:
    """Rows per block for a map ``width`` wide (at least one)."""
    return max(1, _BLOCK_PIXELS // max(1, width))


def _level_blocks(depth: np.ndarray, top: int, value_range: tuple[float, float] | None = None):
    """(row slice, float32 block of ``(d - lo) / (hi - lo) * top + 0.5`` clipped to [0, top])
    for blocks of rows, so a full-size float temporary never exists (a 40 MP depth map would
    need 160 MB more). ``value_range`` (lo, hi) defaults to the map's own min and max; a
    constant map gives all zeros. The yielded block is scratch, overwritten by the next one.

    The arithmetic is numpy's, in the map's float type, one operation at a time in this
    order, in place on a reused block: every output is the same to the bit however the rows
    are blocked, and no temporary is made per block."""
    # With the map's own range every value already lies in [0.5, top + 0.5]: d - lo >= 0 and
    # (d - lo) / (hi - lo) <= 1 hold after rounding too, so clipping would change nothing.
    own_range = value_range is None
    lo, hi = depth_range(depth) if own_range else value_range
    step = block_rows(depth.shape[1])
    kind = np.result_type(depth.dtype, np.float32)  # float32 maps stay float32, float64 stay 64
    scratch = np.empty((min(step, depth.shape[0]), *depth.shape[1:]), kind)
    for top_row in range(0, depth.shape[0], step):
        rows = slice(top_row, min(top_row + step, depth.shape[0]))
        block = scratch[:rows.stop - rows.start]
        if hi == lo:
            block.fill(0)
            yield rows, block
            continue
        np.subtract(depth[rows], lo, out=block)
        block /= hi - lo
        block *= top
        block += 0.5
        yield rows, block if own_range else np.clip(block, 0, top, out=block)


def to_levels(depth: np.ndarray, top: int, dtype: type, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Depth -> integers ``round((d - lo) / (hi - lo) * top)`` of ``dtype``."""
    out = np.empty(depth.shape, dtype)
    for rows, block in _level_blocks(depth, top, value_range):
        out[rows] = block
    return out


def to_uint8(depth: np.ndarray) -> np.ndarray:
    return to_levels(depth, 255, np.uint8)


def level_blocks(depth: np.ndarray, value_range: tuple[float, float] | None = None):
    """uint8 colormap indices (0..255) of ``depth``, in blocks of rows from the top: what
    ``colorize`` looks up, for writers that take the indices themselves (indexed PNG). Each
    yielded block is scratch, overwritten by the next one."""
    step = block_rows(depth.shape[1])
    scratch = np.empty((min(step, depth.shape[0]), *depth.shape[1:]), np.uint8)
    for rows, block in _level_blocks(depth, 255, value_range):
        out = scratch[:rows.stop - rows.start]
        np.copyto(out, block, casting="unsafe")
        yield out


def palette(colormap: int) -> np.ndarray:
    """The 256 BGR colours (256x1x3 uint8) ``cv2.applyColorMap`` gives levels 0..255."""
    return cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), colormap)


def colorize(depth: np.ndarray, colormap: int, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Depth -> uint8 BGR heatmap through ``cv2.applyColorMap``, block by block (no full-size
    level image is ever held besides the heatmap itself)."""
    out = np.empty((*depth.shape, 3), np.uint8)
    for rows, block in _level_blocks(depth, 255, value_range):
        out[rows] = cv2.applyColorMap(block.astype(np.uint8), colormap)
    return out


def depth_png16(depth: np.ndarray) -> np.ndarray:
    """Depth -> uint16 (min-max over 0..65535), to save losslessly-enough as a 16-bit PNG."""
    return to_levels(depth, 65535, np.uint16)


def overlay(image_bgr8: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend the heatmap over the input photo (``alpha`` is the heatmap's weight)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return cv2.addWeighted(heatmap, alpha, image_bgr8, 1.0 - alpha, 0.0)


class SteadyRange:
    """A colour-mapping range that carries across video frames, so colours hold still.

    Per-frame min/max makes a video's colours pump whenever a frame's extremes move (a
    bright object passing, sensor noise at a few pixels). This takes robust percentiles of
    each frame (``low``/``high``: 1st and 99th, immune to a few extreme pixels) and smooths
    them over time (``keep`` of the previous range, ``1 - keep`` of the new one), so the
    mapping follows real changes over a few frames and ignores single-frame jumps.
    """

    def __init__(self, low: float = 1.0, high: float = 99.0, keep: float = 0.9) -> None:
        if not 0 <= low < high <= 100 or not 0 <= keep < 1:
            raise ValueError("need 0 <= low < high <= 100 and 0 <= keep < 1")
        self.low, self.high, self.keep = low, high, keep
        self.range: tuple[float, float] | None = None

    def update(self, depth: np.ndarray) -> tuple[float, float]:
        """Fold in one frame; returns the (lo, hi) to colour it with."""
        step = max(1, int(np.sqrt(depth.size / 65536)))  # ~65k samples are plenty for percentiles
        lo, hi = (float(v) for v in np.percentile(depth[::step, ::step], [self.low, self.high]))
        if self.range is not None:
            lo = self.keep * self.range[0] + (1 - self.keep) * lo
            hi = self.keep * self.range[1] + (1 - self.keep) * hi
        self.range = _flat_to_point(lo, hi)
        return self.range
