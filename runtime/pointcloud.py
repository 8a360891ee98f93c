"""Coloured point clouds as binary little-endian PLY, which standard viewers (MeshLab,
CloudCompare, Open3D, Blender) open.

Each kept pixel (every ``step``-th in x and y) becomes a vertex: ``z`` is its depth, and
``x, y`` come from a pinhole camera, ``X = (u - cx) * z / fx``, ``Y = (v - cy) * z / fy``
(y down, z forward, as OpenCV's camera frame). With metric depth (``--known-depths``) the
units are metres. Without it, MiDaS only gives relative inverse depth, so ``z = max / d``
(1 at the nearest pixel, unknown scale and shift), pixels under 1% of the maximum (the far
background, where inverse depth is noise) are left out, and the header says ``relative``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import MidasOnnxError

DEFAULT_FOV_DEG = 60.0
RELATIVE_FLOOR = 0.01


class PointCloudError(MidasOnnxError, ValueError):
    """Bad intrinsics, field of view or step."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera intrinsics in pixels of the image the depth is for: focal lengths
    ``fx``, ``fy`` and principal point ``cx``, ``cy``. ``from_fov`` guesses them from a field
    of view, ``parse`` reads ``"fx,fy,cx,cy"``."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_fov(cls, width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> "Intrinsics":
        """Square pixels, principal point at the centre, ``fov_deg`` across the width."""
        if not 0 < fov_deg < 180:
            raise PointCloudError(f"the horizontal field of view must be between 0 and 180 degrees, got {fov_deg:g}")
        f = (width / 2) / math.tan(math.radians(fov_deg) / 2)
        return cls(f, f, (width - 1) / 2, (height - 1) / 2)

    @classmethod
    def parse(cls, text: str) -> "Intrinsics":
        """``"fx,fy,cx,cy"`` in pixels."""
        try:
            fx, fy, cx, cy = (float(v) for v in text.split(","))
        except ValueError:
            raise PointCloudError(f"intrinsics must be fx,fy,cx,cy in pixels, got {text!r}") from None
        if not (fx > 0 and fy > 0 and math.isfinite(cx) and math.isfinite(cy)):
            raise PointCloudError(f"focal lengths must be positive and the centre finite, got {text!r}")
        return cls(fx, fy, cx, cy)


def ply_bytes(depth: np.ndarray, image_bgr: np.ndarray, intrinsics: Intrinsics, step: int = 1,
              metric: bool = False) -> bytes:
    """Vertices (float32 x, y, z; uchar red, green, blue) for every ``step``-th pixel with a
    valid depth (finite, and above the relative floor when not metric)."""
    if step < 1:
        raise PointCloudError(f"the point-cloud step must be >= 1, got {step}")
    d = depth[::step, ::step].astype(np.float32)
    colours = image_bgr[::step, ::step]
    v, u = np.mgrid[0:depth.shape[0]:step, 0:depth.shape[1]:step].astype(np.float32)
    if metric:
        z = d
        valid = np.isfinite(z) & (z > 0)
        units = "metres (aligned to known points)"
    else:
        top = float(np.nanmax(depth)) if np.isfinite(depth).any() else 0.0
        valid = np.isfinite(d) & (d > RELATIVE_FLOOR * top)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(valid, top / d, 0).astype(np.float32)
        units = "relative (z = max / inverse depth: unknown scale and shift, not metres)"
    x = (u - intrinsics.cx) * z / intrinsics.fx
    y = (v - intrinsics.cy) * z / intrinsics.fy
    vertex = np.empty(int(valid.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                               ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = x[valid], y[valid], z[valid]
    vertex["red"], vertex["green"], vertex["blue"] = (colours[..., 2][valid], colours[..., 1][valid],
                                                      colours[..., 0][valid])
    header = "\n".join([
        "ply", "format binary_little_endian 1.0",
        "comment made by midas-onnx from MiDaS v2.1 small depth",
        f"comment units: {units}",
        f"comment intrinsics fx={intrinsics.fx:.6g} fy={intrinsics.fy:.6g} cx={intrinsics.cx:.6g} cy={intrinsics.cy:.6g} step={step}",
        f"element vertex {len(vertex)}",
        "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue",
        "end_header", "",
    ])
    return header.encode("ascii") + vertex.tobytes()
