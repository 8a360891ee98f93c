"""Metric alignment's cost is bounded: a count cap, and a fit that grows linearly with points."""

from __future__ import annotations

import time

import numpy as np
import pytest

import runtime.metric as metric
from runtime.metric import MAX_PAIRS, MAX_POINTS, AlignmentError, align


def scene(n: int, wrong: float, seed: int = 0):
    """A smooth prediction made with scale 0.5 / shift 0.4 in inverse depth, and ``n`` known
    points of which a ``wrong`` share are gross outliers (3x their true distance)."""
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    prediction = (1.0 + 2.0 * xx / w + yy / h).astype(np.float32)
    rng = np.random.default_rng(seed)
    xs, ys = rng.integers(0, w, n), rng.integers(0, h, n)
    metres = 1.0 / (0.5 * prediction[ys, xs] + 0.4)
    bad = rng.random(n) < wrong
    metres = np.where(bad, metres * 3.0, metres)
    return prediction, [(float(x), float(y), float(m)) for x, y, m in zip(xs, ys, metres, strict=True)], int(bad.sum())


@pytest.fixture()
def fits(monkeypatch):
    """Counts the least-squares fits align makes (runtime.align's, the project's one fit)."""
    calls = []
    real = metric.fit_scale_shift
    monkeypatch.setattr(metric, "fit_scale_shift", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    return calls


def test_many_points_cost_a_bounded_number_of_fits(fits):
    """800 points took 5.45 s before (every pair: 319,600 fits, each checked against all points)."""
    prediction, points, n_bad = scene(MAX_POINTS, wrong=0.3)
    t = time.perf_counter()
    fit = align(prediction, points)
    elapsed = time.perf_counter() - t
    assert fit.scale == pytest.approx(0.5, rel=1e-4) and fit.shift == pytest.approx(0.4, rel=1e-4)
    assert len(fit.rejected) == n_bad and len(fit.used) == MAX_POINTS - n_bad
    assert len(fits) == MAX_PAIRS + 1  # the pairs, then the final fit on the inliers
    assert elapsed < 1.0, elapsed


def test_small_sets_try_every_pair(fits):
    prediction, points, _ = scene(20, wrong=0.2, seed=3)
    align(prediction, points)
    assert fits[:-1] == [2] * (20 * 19 // 2) and fits[-1] > 2


def test_large_sets_are_deterministic():
    prediction, points, _ = scene(600, wrong=0.45, seed=5)
    a, b = align(prediction, points), align(prediction, points)
    assert (a.scale, a.shift, a.used) == (b.scale, b.shift, b.used)
    assert a.scale == pytest.approx(0.5, rel=1e-4)


def test_more_than_the_cap_is_refused_before_any_work(fits, tmp_path):
    prediction, points, _ = scene(MAX_POINTS + 1, wrong=0.0)
    with pytest.raises(AlignmentError, match=f"{MAX_POINTS + 1:,} known points; at most {MAX_POINTS:,}"):
        align(prediction, points)
    assert fits == []
    csv = tmp_path / "points.csv"
    csv.write_text("x,y,depth_m\n" + "".join(f"{x},{y},{d}\n" for x, y, d in points))
    with pytest.raises(AlignmentError, match=f"at most {MAX_POINTS:,} are accepted"):
        metric.read_points(csv)
