"""What a job writes for each input, validated once before any work starts.

``OutputSpec`` is the one description of a job's outputs: ``heatmap`` and ``bulk`` build it
from their options, workers render with it, and ``job.json`` records it so that a rerun
with other settings is refused instead of mixing two kinds of output in one folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Sequence

from ..outputs.depth_files import FORMATS as DEPTH_FORMATS
from ..outputs.depth_files import check_format, encode_depth
from ..errors import MidasOnnxError
from ..inputs.exif import Camera
from ..depth.metric import Point, align, as_points, metric_depth
from ..model.model_description import ModelDescription
from ..outputs.render import IMAGE_FORMATS, output_suffixes, render
from ..outputs.pointcloud import DEFAULT_FOV_DEG, Intrinsics, ply_bytes
from ..outputs.postprocess import colormap_id

VIDEO_SUFFIXES = {"heatmap": ".heatmap.mp4", "overlay": ".overlay.mp4", "depth": ".depth"}
NORMALIZE = ("video", "frame")


class OutputSpecError(MidasOnnxError, ValueError):
    """Output options that cannot go together, or that this machine cannot write."""


@dataclass(frozen=True)
class OutputSpec:
    """Every output of one input. ``points``: known (x, y, metres), making a relative model's
    depth files and point clouds metric (a metric model's get the one scale they agree on); ``normalize``: how a relative model's video frames
    are coloured (a metric model's colours span its fixed range of metres, always)."""

    colormap: str = "inferno"
    depth: str | None = None
    overlay: bool = False
    points: tuple[Point, ...] | None = None
    ply: bool = False
    ply_step: int = 1
    fov: float | None = None
    intrinsics: Intrinsics | None = None
    normalize: str = "video"
    image_format: str = "png"

    @classmethod
    def make(cls, *, colormap: str = "inferno", depth: str | None = None, overlay: bool = False,
             points: Sequence | None = None, ply: bool = False, ply_step: int = 1, fov: float | None = None,
             intrinsics: str | Intrinsics | None = None, normalize: str = "video",
             image_format: str = "png") -> "OutputSpec":
        """A checked spec: every refusal here happens before any input is read."""
        try:
            colormap_id(colormap)
        except ValueError as exc:
            raise OutputSpecError(str(exc)) from None
        depth = None if depth in (None, "none") else depth
        if depth is not None:
            check_format(depth)
        if points is not None:
            points = tuple(as_points(points))
            if depth == "png16":
                raise OutputSpecError("png16 depth is normalised per image and cannot hold metres; "
                                      "use npy, pfm or exr with known depths")
            depth = depth or "npy"  # metres need a float format
        if fov is not None and intrinsics is not None:
            raise OutputSpecError("a field of view and intrinsics are alternatives; give one")
        if ply_step < 1:
            raise OutputSpecError(f"the point-cloud step must be >= 1, got {ply_step}")
        if normalize not in NORMALIZE:
            raise OutputSpecError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if image_format not in IMAGE_FORMATS:
            raise OutputSpecError(f"unknown image format {image_format!r}; choose from {', '.join(IMAGE_FORMATS)}")
        if isinstance(intrinsics, str):
            intrinsics = Intrinsics.parse(intrinsics)
        return cls(colormap.lower(), depth, overlay, points, ply, ply_step, fov, intrinsics, normalize, image_format)

    @property
    def wants_camera(self) -> bool:
        """Whether point clouds need the photo's EXIF (no intrinsics were given)."""
        return self.ply and self.intrinsics is None

    def image_suffixes(self) -> dict[str, str]:
        """kind -> suffix after a still image's full name."""
        kinds = output_suffixes(self.depth, self.overlay, self.image_format)
        if self.points is not None:
            kinds["align"] = ".align.json"
        if self.ply:
            kinds["ply"] = ".ply"
        return kinds

    def video_suffixes(self) -> dict[str, str]:
        """kind -> suffix after a video's full name (point clouds and fits are per image)."""
        kinds = {"heatmap": VIDEO_SUFFIXES["heatmap"]}
        if self.overlay:
            kinds["overlay"] = VIDEO_SUFFIXES["overlay"]
        if self.depth:
            kinds["depth"] = VIDEO_SUFFIXES["depth"]
        return kinds

    def record(self) -> dict:
        """The settings every output depends on, as ``job.json`` keeps them."""
        return {
            "colormap": self.colormap,
            "depth": self.depth,
            "overlay": self.overlay,
            "points": [[p.x, p.y, p.depth_m] for p in self.points] if self.points is not None else None,
            "ply": [self.ply_step, self.fov, [self.intrinsics.fx, self.intrinsics.fy, self.intrinsics.cx,
                                              self.intrinsics.cy] if self.intrinsics else None] if self.ply else None,
            "normalize": self.normalize,
            "image_format": self.image_format,
        }

    def render(self, result, kinds: Sequence[str], *, model: str = "", camera: Camera | None = None
               ) -> dict[str, bytes]:
        """Every requested output's bytes for one image's result, all made before any is
        written; metric outputs use one fit per image. ``model``: the model's title (point
        clouds name it); ``camera``: the photo's EXIF camera tags (point-cloud intrinsics)."""
        wanted = colormap_id(self.colormap)
        if result.colormap != wanted:  # the spec decides the colours, not the session's default
            result = replace(result, colormap=wanted)
        metric_model = result.output is not None and result.output.metric
        fit = align(result.depth, self.points, metric=metric_model) if self.points is not None else None
        depth = metric_depth(result.depth, fit) if fit is not None else result.depth
        out: dict[str, bytes] = {}
        for kind in kinds:
            if kind in ("heatmap", "overlay"):
                out[kind] = render(result, kind, self.image_format)
            elif kind == "depth":
                out[kind] = encode_depth(depth, self.depth, result.output)
            elif kind == "align":
                out[kind] = (json.dumps(fit.to_dict(), indent=2) + "\n").encode()
            elif kind == "ply":
                metric = fit is not None or metric_model
                note = ("metres: the model's own, scaled to known points" if fit is not None and metric_model else
                        "metres: fitted to known points (scale and shift in inverse depth)" if fit is not None else
                        "metres: the model's own output" if metric else "")
                out[kind] = ply_bytes(depth, result.image, self.intrinsics_for(*depth.shape[::-1], camera), self.ply_step,
                                      metric=metric, model=model, notes=[note] if note else [])
            else:
                raise ValueError(f"unknown output kind {kind!r}")
        return out

    def intrinsics_for(self, width: int, height: int, camera: Camera | None = None) -> Intrinsics:
        """Point-cloud intrinsics: ``--intrinsics``, else the photo's EXIF focal length, else
        ``--fov`` (default 60 degrees); their ``source`` says which."""
        if self.intrinsics is not None:
            return replace(self.intrinsics, source="--intrinsics")
        found = Intrinsics.from_exif(camera, width, height) if camera is not None else None
        if found is not None:
            return found
        guess = Intrinsics.from_fov(width, height, self.fov or DEFAULT_FOV_DEG)
        given = "--fov" if self.fov else "the default"
        return replace(guess, source=f"{guess.source} ({given}: no usable focal length in the photo's EXIF)")


def depth_frame_suffix(depth: str) -> str:
    """A video's depth frames: ``000000.png`` / ``.npy`` / ``.pfm`` / ``.exr``."""
    return DEPTH_FORMATS[depth][0].removeprefix(".depth")
