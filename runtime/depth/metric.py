"""Metric depth from a few known distances.

MiDaS predicts relative inverse depth: right up to an unknown scale and shift. With a few
pixels whose distance is known (a laser, a tape, a LiDAR return), the scale and shift in
inverse-depth space (``1 / depth_m ~ scale * prediction + shift``, as the MiDaS paper
aligns predictions to ground truth) turn the prediction into metres. A metric model's
output is already metres, right up to a scale (a camera unlike its training set's, a lens'
focal length): ``align(..., metric=True)`` fits that one scale, ``depth_m ~ scale *
prediction``.

Robustness: RANSAC over pairs of points (the minimal sample for two unknowns), keeping the
pair (a single point for a scale alone) whose fit agrees with the most points (within ``INLIER_TOLERANCE`` relative error in
metres, ties to the lower error), then least squares on those points. Every pair is tried
while there are at most ``MAX_PAIRS`` of them; beyond that, ``MAX_PAIRS`` pairs drawn with a
fixed seed, so the result stays deterministic and the cost grows linearly with the points
(``MAX_PAIRS`` x points agreement checks; with half the points wrong, the chance that no
drawn pair is all-inlier is 0.75^300, about 1e-37). At most ``MAX_POINTS`` points. A wrong point (the tape hit another surface, a LiDAR return
from glass) is a gross outlier: with few points an M-estimator can still be pulled by two
of them, while a consensus of at least 3 points rejects them outright.

    from runtime import DepthHeatmapper
    from runtime.depth.metric import align, metric_depth
    result = DepthHeatmapper("models/midas_small.int8.onnx").predict("room.jpg")
    fit = align(result.depth, [(120, 340, 2.5), (610, 300, 4.1), (330, 80, 7.9)])
    metres = metric_depth(result.depth, fit)        # NaN where the fit gives no distance
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .align import fit_scale_shift
from ..errors import MidasOnnxError

MIN_POINTS = 3
MAX_POINTS = 1000  # far beyond any hand-measured set; bounds memory and time per image
MAX_PAIRS = 300  # all pairs up to 25 points; a fixed-seed draw of this many beyond
INLIER_TOLERANCE = 0.10  # a point agrees with a fit when its metric depth is within 10%
# Known distances from a micrometre to 10,000 km: beyond any camera's scene, and far enough
# inside float64 that inverse depths, fits and residuals stay finite (1e185 m made an
# infinite residual, which JSON cannot carry).
MIN_DEPTH_M, MAX_DEPTH_M = 1e-6, 1e7


class AlignmentError(MidasOnnxError, ValueError):
    """Known points that are missing, invalid, outside the image, or that no fit agrees with."""


@dataclass(frozen=True)
class Point:
    """A pixel whose distance is known: ``x`` (column) and ``y`` (row) in the image's own
    pixels, sub-pixel allowed (the depth is sampled bilinearly), ``depth_m`` in metres."""

    x: float
    y: float
    depth_m: float


SCALE_METHOD = (f"RANSAC over single points (each point's own scale; inliers within {INLIER_TOLERANCE:.0%}), then "
                "least squares of the relative error, in metres: scale only, for a model that gives metres")


@dataclass(frozen=True)
class Alignment:
    """``1 / depth_m = scale * prediction + shift`` (a relative model's inverse depth), or
    ``depth_m = scale * prediction`` when ``in_metres`` (a metric model's, shift 0); residual
    is the RMS error in metres at the points used."""

    scale: float
    shift: float
    used: tuple[Point, ...]
    rejected: tuple[Point, ...]
    residual_m: float
    method: str = (f"RANSAC over point pairs (all of them up to {MAX_PAIRS}, else {MAX_PAIRS} drawn with a fixed "
                   f"seed; inliers within {INLIER_TOLERANCE:.0%}), then least squares, in inverse depth")
    in_metres: bool = False

    def to_dict(self) -> dict:
        """Plain JSON-ready values, built directly: ``dataclasses.asdict`` deep-copies every
        point, 4 ms for 256 of them, more than the fit itself."""
        def plain(points: tuple[Point, ...]) -> list[dict]:
            return [{"x": p.x, "y": p.y, "depth_m": p.depth_m} for p in points]

        return {"scale": self.scale, "shift": self.shift, "fitted_in": "metres" if self.in_metres else "inverse_depth",
                "residual_m": self.residual_m, "method": self.method,
                "points_used": plain(self.used), "points_rejected": plain(self.rejected)}


def read_points(path: str | Path) -> list[Point]:
    """Points from a CSV with columns ``x,y,depth_m`` (pixel coordinates, metres), UTF-8 with
    or without the byte-order mark spreadsheets write."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"x", "y", "depth_m"} <= set(reader.fieldnames):
                raise AlignmentError(f"{path}: needs the columns x,y,depth_m (got {reader.fieldnames})")
            rows = list(reader)
    except OSError as exc:
        raise AlignmentError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise AlignmentError(f"{path}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
    if len(rows) > MAX_POINTS:
        raise AlignmentError(f"{path}: {len(rows):,} points; at most {MAX_POINTS:,} are accepted")
    points = []
    for i, row in enumerate(rows, start=2):
        try:
            points.append(Point(float(row["x"]), float(row["y"]), float(row["depth_m"])))
        except (TypeError, ValueError):
            raise AlignmentError(f"{path}, line {i}: x, y and depth_m must be numbers, got {row}") from None
    return points


def as_points(items: Sequence) -> list[Point]:
    """Points from (x, y, depth_m) triples or {"x", "y", "depth_m"} mappings (JSON)."""
    if len(items) > MAX_POINTS:
        raise AlignmentError(f"{len(items):,} known points; at most {MAX_POINTS:,} are accepted")
    out = []
    for item in items:
        try:
            if isinstance(item, Point):
                out.append(item)
            elif isinstance(item, dict):
                out.append(Point(float(item["x"]), float(item["y"]), float(item["depth_m"])))
            else:
                x, y, d = item
                out.append(Point(float(x), float(y), float(d)))
        except (KeyError, TypeError, ValueError):
            raise AlignmentError(f"a known point must be (x, y, depth_m), got {item!r}") from None
    return out


def align(depth: np.ndarray, points: Sequence, *, metric: bool = False) -> Alignment:
    """Fit scale and shift so that ``1 / (scale * depth + shift)`` is metres at the points;
    ``metric``: ``depth`` is a metric model's metres, and only a scale is fitted."""
    points = _checked(depth, points)
    pred = _sample(depth, np.array([p.x for p in points]), np.array([p.y for p in points]))
    metres = np.array([p.depth_m for p in points], np.float64)
    if metric:
        return _align_scale(pred, metres, points)
    target = 1.0 / metres

    keep = _consensus(pred, target, metres)
    if keep is None or keep.sum() < MIN_POINTS:
        raise AlignmentError(
            f"the known points do not agree on one scale and shift: at most {0 if keep is None else keep.sum()} of "
            f"{len(points)} fit within {INLIER_TOLERANCE:.0%}; check them, or add points")
    fit = fit_scale_shift(pred[keep], target[keep])
    if fit is None:
        raise AlignmentError("the known points all have the same predicted depth; pick points at different distances")
    scale, shift = fit
    inverse = scale * pred[keep] + shift
    if not (inverse > 0).all():
        raise AlignmentError("the fit gives no positive inverse depth at some known points; check the points")
    residual = _rms(1.0 / inverse - metres[keep])
    return Alignment(float(scale), float(shift), *_split(points, keep), residual)


def _checked(depth: np.ndarray, points: Sequence) -> list[Point]:
    """The points, each inside the image with a distance in range, and enough of them."""
    points = as_points(points)
    if len(points) < MIN_POINTS:
        raise AlignmentError(f"metric depth needs at least {MIN_POINTS} known points, got {len(points)}")
    h, w = depth.shape
    for p in points:
        if not (math.isfinite(p.x) and math.isfinite(p.y) and 0 <= p.x <= w - 1 and 0 <= p.y <= h - 1):
            raise AlignmentError(f"point ({p.x:g}, {p.y:g}) lies outside the {w}x{h} image")
        if not (math.isfinite(p.depth_m) and p.depth_m > 0):
            raise AlignmentError(f"point ({p.x:g}, {p.y:g}): depth_m must be a positive number, got {p.depth_m:g}")
        if not MIN_DEPTH_M <= p.depth_m <= MAX_DEPTH_M:
            raise AlignmentError(f"point ({p.x:g}, {p.y:g}): depth_m {p.depth_m:g} is outside {MIN_DEPTH_M:g} to "
                                 f"{MAX_DEPTH_M:g} m")
    return points


def _split(points: list[Point], keep: np.ndarray) -> tuple[tuple[Point, ...], tuple[Point, ...]]:
    """(used, rejected) points."""
    return (tuple(p for p, k in zip(points, keep, strict=True) if k),
            tuple(p for p, k in zip(points, keep, strict=True) if not k))


def _align_scale(pred: np.ndarray, metres: np.ndarray, points: list[Point]) -> Alignment:
    """A metric model's one scale: each point with a positive prediction proposes its own
    (``metres / prediction``); the one most points agree with (ties to the lower mean
    relative error) picks the inliers, whose relative errors a least-squares scale then
    minimises (``sum(p / m) / sum((p / m)^2)``, so a far point weighs no more than a near one)."""
    usable = pred > 0
    if usable.sum() < MIN_POINTS:
        raise AlignmentError(f"the model gives no positive depth at {int((~usable).sum())} of the {len(points)} "
                             f"known points; at least {MIN_POINTS} are needed")
    scales = np.where(usable, metres / np.where(usable, pred, 1.0), np.nan)[usable]
    with np.errstate(invalid="ignore"):
        rel = np.abs(scales[:, None] * pred[None, :] - metres[None, :]) / metres[None, :]
    inliers = (rel <= INLIER_TOLERANCE) & usable[None, :]
    count = inliers.sum(axis=1)
    err = np.where(inliers, rel, 0.0).sum(axis=1) / np.maximum(count, 1)
    keep = inliers[np.lexsort((np.arange(count.size), err, -count))[0]]
    if keep.sum() < MIN_POINTS:
        raise AlignmentError(f"the known points do not agree on one scale: at most {int(keep.sum())} of {len(points)} "
                             f"fit within {INLIER_TOLERANCE:.0%}; check them, or add points")
    ratio = pred[keep] / metres[keep]
    scale = float(ratio.sum() / (ratio * ratio).sum())
    residual = _rms(scale * pred[keep] - metres[keep])
    return Alignment(scale, 0.0, *_split(points, keep), residual, SCALE_METHOD, in_metres=True)


def metric_depth(depth: np.ndarray, fit: Alignment) -> np.ndarray:
    """Metres per pixel (float32); NaN where the fitted inverse depth is not positive (never a
    negative or infinite distance)."""
    if fit.in_metres:
        out = np.where(depth > 0, depth.astype(np.float32) * np.float32(fit.scale), np.float32(np.nan))
        return out.astype(np.float32, copy=False)
    inverse = _inverse(depth, fit)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(inverse > 0, np.float32(1.0) / inverse, np.float32(np.nan))
    return out.astype(np.float32, copy=False)


def metric_summary(depth: np.ndarray, fit: Alignment) -> dict | None:
    """min, max and median metres over the pixels with a finite distance, the values
    ``metric_depth`` gives them, without making that map. A relative fit's metres are
    ``1 / inverse``, decreasing in the inverse, so its extremes and middle elements are the
    inverse's, flipped: one reciprocal per figure, not per pixel. None when no pixel has a
    distance."""
    one = np.float32(1.0)
    if fit.in_metres:
        with np.errstate(over="ignore"):
            values = depth[depth > 0].astype(np.float32) * np.float32(fit.scale)
        values = values[np.isfinite(values)]  # past float32 (absurd points): no distance
    else:
        inverse = _inverse(depth, fit)
        values = inverse[inverse > 0]
        if values.size and not np.isfinite(one / values.min()):  # metres past float32 (absurd points)
            with np.errstate(divide="ignore", over="ignore"):
                values = values[np.isfinite(one / values)]
    if not values.size:
        return None
    n, k = values.size, values.size // 2
    middle = [k] if n % 2 else [k - 1, k]
    values.partition(middle)
    if fit.in_metres:
        return {"min": float(values.min()), "max": float(values.max()),
                "median": float(values[middle].mean(dtype=np.float64))}
    return {"min": float(one / values.max()), "max": float(one / values.min()),
            "median": float((one / values[middle]).mean(dtype=np.float64))}


def _inverse(depth: np.ndarray, fit: Alignment) -> np.ndarray:
    """The fitted inverse depth (float32) of a relative model, of which metres are the
    reciprocal."""
    return depth.astype(np.float32) * np.float32(fit.scale) + np.float32(fit.shift)


def _rms(errors: np.ndarray) -> float:
    """Root mean square, scaled by the largest error so that squaring cannot overflow."""
    largest = float(np.abs(errors).max()) if errors.size else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return largest
    return largest * float(np.sqrt(np.mean((errors / largest) ** 2)))


def _sample(depth: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples (float64) at pixel coordinates inside the image (x right, y down;
    integers are pixel centres), all points at once, weighing in the depth's own precision."""
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    x1, y1 = np.minimum(x0 + 1, depth.shape[1] - 1), np.minimum(y0 + 1, depth.shape[0] - 1)
    fx, fy = x - x0, y - y0
    wx0, wx1, wy0, wy1 = (w.astype(depth.dtype) for w in (1 - fx, fx, 1 - fy, fy))
    top = depth[y0, x0] * wx0 + depth[y0, x1] * wx1
    bottom = depth[y1, x0] * wx0 + depth[y1, x1] * wx1
    return (top * wy0 + bottom * wy1).astype(np.float64)


def _pairs(n: int):
    """Every pair while there are at most MAX_PAIRS, else MAX_PAIRS distinct pairs drawn with a
    fixed seed (deterministic, and the caller's cost stays linear in n)."""
    if n * (n - 1) // 2 <= MAX_PAIRS:
        return list(itertools.combinations(range(n), 2))
    rng = np.random.default_rng(0)
    i = rng.integers(0, n, MAX_PAIRS)
    j = (i + rng.integers(1, n, MAX_PAIRS)) % n  # never i itself
    return list(zip(i.tolist(), j.tolist(), strict=True))


def _consensus(pred: np.ndarray, target: np.ndarray, metres: np.ndarray) -> np.ndarray | None:
    """The inliers of the best pair's line: most points within the tolerance, ties to the lower
    mean relative error, then to the earlier pair. Every pair's line and its agreement with
    every point at once (pairs x points arrays, at most MAX_PAIRS x MAX_POINTS), so the cost
    is a few array passes, not a Python loop per pair. None if every pair is flat."""
    i, j = (np.array(ix, np.intp) for ix in zip(*_pairs(len(pred)), strict=True))
    mp, half = (pred[i] + pred[j]) / 2, (pred[j] - pred[i]) / 2
    ok = half * half > (1e-12 * np.maximum(1.0, np.abs(mp))) ** 2  # as fit_scale_shift: a flat pair fits nothing
    if not ok.any():
        return None
    i, j, mp, half = i[ok], j[ok], mp[ok], half[ok]
    scale = (target[j] - target[i]) / (2 * half)
    shift = (target[i] + target[j]) / 2 - scale * mp
    inverse = scale[:, None] * pred[None, :] + shift[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(inverse > 0, np.abs(1.0 / inverse - metres) / metres, np.inf)
    inliers = rel <= INLIER_TOLERANCE
    count = inliers.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(count > 0, np.where(inliers, rel, 0.0).sum(axis=1) / count, np.inf)
    best = np.lexsort((np.arange(count.size), err, -count))[0]
    return inliers[best]
