"""Coloured point clouds as binary little-endian PLY, which standard viewers (MeshLab,
CloudCompare, Open3D, Blender) open.

Each kept pixel (every ``step``-th in x and y) becomes a vertex: ``z`` is its depth, and
``x, y`` come from a pinhole camera, ``X = (u - cx) * z / fx``, ``Y = (v - cy) * z / fy``
(y down, z forward, as OpenCV's camera frame). With metric depth (a metric model's own
metres, or a relative model's fitted to ``--known-depths``) the units are metres. Without
it, a relative model only gives inverse depth, so ``z = max / d`` (1 at the nearest pixel,
unknown scale and shift), pixels under 1% of the maximum (the far background, where inverse
depth is noise) are left out, and the header says ``relative``.

The camera: given intrinsics, else the photo's EXIF focal length (``Intrinsics.from_exif``),
else a field of view; the header says which (``comment intrinsics source: ...``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import MidasOnnxError
from ..inputs.exif import Camera

DEFAULT_FOV_DEG = 60.0
RELATIVE_FLOOR = 0.01
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 35 mm film: what "35 mm equivalent" is measured against
EXIF_FOV_DEG = (1.0, 179.0)  # focal lengths giving a horizontal view outside this are not believed


class PointCloudError(MidasOnnxError, ValueError):
    """Bad intrinsics, field of view or step."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera intrinsics in pixels of the image the depth is for: focal lengths
    ``fx``, ``fy`` and principal point ``cx``, ``cy``; ``source`` says where they came from
    (written into the PLY header). ``from_fov`` guesses them from a field of view,
    ``from_exif`` works them out from a photo's EXIF, ``parse`` reads ``"fx,fy,cx,cy"``."""

    fx: float
    fy: float
    cx: float
    cy: float
    source: str = field(default="", compare=False)

    @classmethod
    def from_fov(cls, width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> "Intrinsics":
        """Square pixels, principal point at the centre, ``fov_deg`` across the width."""
        if not 0 < fov_deg < 180:
            raise PointCloudError(f"the horizontal field of view must be between 0 and 180 degrees, got {fov_deg:g}")
        f = (width / 2) / math.tan(math.radians(fov_deg) / 2)
        return cls(f, f, (width - 1) / 2, (height - 1) / 2, f"horizontal field of view {fov_deg:g} degrees")

    @classmethod
    def from_exif(cls, camera: Camera, width: int, height: int) -> "Intrinsics | None":
        """From the EXIF of a photo decoded upright at ``width`` x ``height``, or None when it
        gives no believable focal length. Principal point at the centre.

        First the 35 mm equivalent focal length, measured across the diagonal as the angle of
        view is (36x24 mm film: 43.3 mm), so it holds for a resized photo of any aspect;
        else the real focal length times the focal-plane resolution (sensor pixels per unit,
        for the image of ``pixel_width`` x ``pixel_height``, scaled to the decoded size and
        turned with the photo). A cropped photo keeps its camera's EXIF and gets a focal
        length too short: give ``--intrinsics`` for those."""
        cx, cy = (width - 1) / 2, (height - 1) / 2
        if camera.focal_35mm:
            f = camera.focal_35mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
            found = cls(f, f, cx, cy, f"EXIF FocalLengthIn35mmFilm {camera.focal_35mm:g} mm (35 mm equivalent, "
                                      "across the diagonal)")
        elif camera.focal_length_mm and camera.focal_plane_x and camera.focal_plane_y and camera.focal_plane_unit_mm:
            fx, fy = (camera.focal_length_mm * r / camera.focal_plane_unit_mm
                      for r in (camera.focal_plane_x, camera.focal_plane_y))
            stored = (camera.pixel_width, camera.pixel_height)
            if stored[0] and stored[1] and stored[0] != stored[1]:
                turned = (stored[0] > stored[1]) != (width > height)
            else:
                turned = camera.orientation >= 5  # EXIF orientations 5-8 swap width and height
            if turned:
                fx, fy, stored = fy, fx, stored[::-1]
            fx *= width / stored[0] if stored[0] else 1.0
            fy *= height / stored[1] if stored[1] else 1.0
            found = cls(fx, fy, cx, cy, f"EXIF FocalLength {camera.focal_length_mm:g} mm with FocalPlaneX/YResolution "
                                        f"{camera.focal_plane_x:g}/{camera.focal_plane_y:g} pixels per "
                                        f"{camera.focal_plane_unit_mm:g} mm")
        else:
            return None
        fov = 2 * math.degrees(math.atan(width / 2 / found.fx)) if found.fx > 0 else 0.0
        ok = math.isfinite(found.fy) and found.fy > 0 and EXIF_FOV_DEG[0] <= fov <= EXIF_FOV_DEG[1]
        return found if ok else None

    @classmethod
    def parse(cls, text: str) -> "Intrinsics":
        """``"fx,fy,cx,cy"`` in pixels."""
        try:
            fx, fy, cx, cy = (float(v) for v in text.split(","))
        except ValueError:
            raise PointCloudError(f"intrinsics must be fx,fy,cx,cy in pixels, got {text!r}") from None
        if not (fx > 0 and fy > 0 and math.isfinite(cx) and math.isfinite(cy)):
            raise PointCloudError(f"focal lengths must be positive and the centre finite, got {text!r}")
        return cls(fx, fy, cx, cy, "given (fx,fy,cx,cy)")


def ply_bytes(depth: np.ndarray, image_bgr: np.ndarray, intrinsics: Intrinsics, step: int = 1,
              metric: bool = False, *, model: str = "", notes: Sequence[str] = ()) -> bytes:
    """Vertices (float32 x, y, z; uchar red, green, blue) for every ``step``-th pixel with a
    valid depth (finite, and above the relative floor when not metric). The header names
    ``model`` (its title), the units, each of ``notes`` and the intrinsics with their source."""
    if step < 1:
        raise PointCloudError(f"the point-cloud step must be >= 1, got {step}")
    d = depth[::step, ::step].astype(np.float32)
    colours = image_bgr[::step, ::step]
    v, u = np.mgrid[0:depth.shape[0]:step, 0:depth.shape[1]:step].astype(np.float32)
    if metric:
        z = d
        valid = np.isfinite(z) & (z > 0)
        units = "metres"
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
    cam = intrinsics
    header = "\n".join([
        "ply", "format binary_little_endian 1.0",
        "comment made by midas-onnx" + (f" from {model} depth" if model else ""),
        f"comment units: {units}",
        *(f"comment {note}" for note in notes),
        f"comment intrinsics fx={cam.fx:.6g} fy={cam.fy:.6g} cx={cam.cx:.6g} cy={cam.cy:.6g} step={step}",
        *([f"comment intrinsics source: {cam.source}"] if cam.source else []),
        f"element vertex {len(vertex)}",
        "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue",
        "end_header", "",
    ])
    return header.encode("ascii") + vertex.tobytes()
