"""From network output to what people look at: depth at the input's size, colour heatmaps,
overlays and 16-bit depth PNGs. The output is relative *inverse* depth: larger is nearer,
so with a dark-to-bright colormap near objects are bright.
"""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_COLORMAP = "inferno"
COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}


def colormap_id(name: str) -> int:
    """OpenCV colormap constant for a case-insensitive name ("inferno", "turbo", ...)."""
    try:
        return COLORMAPS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; choose from {', '.join(sorted(COLORMAPS))}") from None


def resize_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Network-size depth -> input size, bicubic as upstream's ``F.interpolate(mode="bicubic")``."""
    if depth.shape == (height, width):
        return depth.astype(np.float32, copy=False)
    return cv2.resize(depth, (width, height), interpolation=cv2.INTER_CUBIC)


def normalise(depth: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros instead of dividing by zero."""
    lo, hi = float(depth.min()), float(depth.max())
    if not hi - lo > 1e-12 * max(1.0, abs(hi)):
        return np.zeros(depth.shape, dtype=np.float32)
    return ((depth - lo) / (hi - lo)).astype(np.float32)


def to_uint8(depth: np.ndarray) -> np.ndarray:
    return np.clip(normalise(depth) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def colorize(depth: np.ndarray, colormap: int) -> np.ndarray:
    """Depth -> uint8 BGR heatmap through ``cv2.applyColorMap``."""
    return cv2.applyColorMap(to_uint8(depth), colormap)


def depth_png16(depth: np.ndarray) -> np.ndarray:
    """Depth -> uint16 (min-max over 0..65535), to save losslessly-enough as a 16-bit PNG."""
    return np.clip(normalise(depth) * 65535.0 + 0.5, 0, 65535).astype(np.uint16)


def overlay(image_bgr8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the heatmap over the input photo (``alpha`` is the heatmap's weight)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return cv2.addWeighted(heatmap, alpha, image_bgr8, 1.0 - alpha, 0.0)
