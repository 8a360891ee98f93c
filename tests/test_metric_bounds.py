"""Metric alignment's cost is bounded: a count cap, and a fit that grows linearly with points."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

import runtime.depth.metric as metric
from runtime.depth.align import fit_scale_shift
from runtime.depth.metric import MAX_PAIRS, MAX_POINTS, AlignmentError, align, metric_depth


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
def work(monkeypatch):
    """What align computes: the pairs it tries (``pairs``) and the least-squares fits it makes
    (``fits``, sizes; runtime.depth.align's, the project's one fit)."""
    calls: dict[str, list] = {"pairs": [], "fits": []}
    real_pairs, real_fit = metric._pairs, metric.fit_scale_shift
    monkeypatch.setattr(metric, "_pairs", lambda n: calls["pairs"].append(p := real_pairs(n)) or p)
    monkeypatch.setattr(metric, "fit_scale_shift", lambda *a, **k: calls["fits"].append(len(a[0])) or real_fit(*a, **k))
    return calls


def test_many_points_cost_a_bounded_number_of_pairs(work):
    """800 points took 5.45 s before (every pair: 319,600 fits, each checked against all points)."""
    prediction, points, n_bad = scene(MAX_POINTS, wrong=0.3)
    t = time.perf_counter()
    fit = align(prediction, points)
    elapsed = time.perf_counter() - t
    assert fit.scale == pytest.approx(0.5, rel=1e-4) and fit.shift == pytest.approx(0.4, rel=1e-4)
    assert len(fit.rejected) == n_bad and len(fit.used) == MAX_POINTS - n_bad
    assert [len(p) for p in work["pairs"]] == [MAX_PAIRS]
    assert work["fits"] == [MAX_POINTS - n_bad]  # one least-squares fit, on the inliers
    assert elapsed < 0.5, elapsed  # 15 ms measured


def test_small_sets_try_every_pair(work):
    prediction, points, _ = scene(20, wrong=0.2, seed=3)
    align(prediction, points)
    assert sorted(work["pairs"][0]) == [(i, j) for i in range(20) for j in range(i + 1, 20)]
    assert len(work["fits"]) == 1 and work["fits"][0] > 2


def reference_consensus(pred, target, metres):
    """The consensus the slow way: one least-squares fit per pair and a pass over the points
    each, first best kept (most inliers, then lowest mean relative error)."""
    best = None
    for i, j in metric._pairs(len(pred)):
        fit = fit_scale_shift(pred[[i, j]], target[[i, j]])
        if fit is None:
            continue
        inverse = fit[0] * pred + fit[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(inverse > 0, np.abs(1.0 / inverse - metres) / metres, np.inf)
        inliers = rel <= metric.INLIER_TOLERANCE
        err = float(rel[inliers].mean()) if inliers.any() else np.inf
        if best is None or (inliers.sum(), -err) > (best[0], -best[1]):
            best = (inliers.sum(), err, inliers)
    return None if best is None else best[2]


@pytest.mark.parametrize("seed", range(40))
def test_consensus_matches_one_fit_per_pair(seed):
    """All pairs at once in arrays choose the same inliers as fitting each pair in turn."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 60)) if seed % 4 else int(rng.integers(26, 200))
    pred = rng.uniform(0.1, 5, n)
    metres = 1 / (rng.uniform(0.1, 2) * pred + rng.uniform(0.01, 0.5)) * rng.uniform(0.97, 1.03, n)
    wrong = rng.random(n) < 0.3
    metres[wrong] = rng.uniform(0.5, 20, wrong.sum())
    if seed % 5 == 0:
        metres = rng.uniform(1, 9, n)  # no consensus at all
    if seed % 7 == 0:
        pred[: n // 2] = pred[0]  # many flat pairs
    expected = reference_consensus(pred, 1 / metres, metres)
    got = metric._consensus(pred, 1 / metres, metres)
    assert (expected is None) == (got is None)
    if expected is not None:
        assert got.tolist() == expected.tolist()


def test_large_sets_are_deterministic():
    prediction, points, _ = scene(600, wrong=0.45, seed=5)
    a, b = align(prediction, points), align(prediction, points)
    assert (a.scale, a.shift, a.used) == (b.scale, b.shift, b.used)
    assert a.scale == pytest.approx(0.5, rel=1e-4)


def test_more_than_the_cap_is_refused_before_any_work(work, tmp_path):
    prediction, points, _ = scene(MAX_POINTS + 1, wrong=0.0)
    with pytest.raises(AlignmentError, match=f"{MAX_POINTS + 1:,} known points; at most {MAX_POINTS:,}"):
        align(prediction, points)
    assert work == {"pairs": [], "fits": []}
    csv = tmp_path / "points.csv"
    csv.write_text("x,y,depth_m\n" + "".join(f"{x},{y},{d}\n" for x, y, d in points))
    with pytest.raises(AlignmentError, match=f"at most {MAX_POINTS:,} are accepted"):
        metric.read_points(csv)


@pytest.mark.parametrize("metres", [1e38, 1e170, 1e200, 1e-9])
def test_absurd_distances_are_refused_not_an_infinite_fit(metres):
    """Points at 1e170-1e200 m gave an infinite residual (a 500 from the server on every try:
    JSON cannot carry it). Distances outside 1 um to 10,000 km are refused by name."""
    prediction, _, _ = scene(0, 0.0)
    points = [(x, y, metres * (1 + (x + y) / 1000)) for x, y in [(10, 10), (300, 200), (500, 50), (100, 350)]]
    with pytest.raises(AlignmentError, match=r"depth_m .* is outside 1e-06 to 1e\+07 m"):
        align(prediction, points)


def test_the_residual_is_finite_at_the_largest_distances_accepted():
    """At 10,000 km, errors of a few hundred km square past nothing: the residual is scaled."""
    prediction, _, _ = scene(0, 0.0)
    scale = 1e-7
    points = [(float(x), float(y), 1.0 / (scale * float(prediction[y, x])) * (1.02 if k % 2 else 0.98))
              for k, (x, y) in enumerate([(10, 10), (300, 200), (500, 50), (100, 350), (600, 100)])]
    fit = align(prediction, points)
    assert np.isfinite(fit.residual_m) and 0 < fit.residual_m < 1e6
    assert metric._rms(np.array([3e200, -4e200])) == pytest.approx(np.sqrt(12.5) * 1e200)


def test_a_csv_with_a_byte_order_mark_or_latin1_bytes(tmp_path):
    """A spreadsheet's UTF-8 byte-order mark hid the x column; Latin-1 bytes were a
    UnicodeDecodeError traceback (issue 33)."""
    from runtime.depth.metric import read_points

    bom = tmp_path / "bom.csv"
    bom.write_bytes("x,y,depth_m\n1,2,3.5\n".encode("utf-8-sig"))
    assert [(p.x, p.y, p.depth_m) for p in read_points(bom)] == [(1.0, 2.0, 3.5)]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("x,y,depth_m,note\n1,2,3.5,caf\xe9\n".encode("latin-1"))
    with pytest.raises(AlignmentError, match="latin.csv: not UTF-8 text"):
        read_points(latin)


def test_a_metric_models_scale_rejects_outliers_and_keeps_zero_shift():
    """``metric=True``: one scale, chosen by the points that agree (two wrong ones rejected),
    then least squares of the relative error; metres stay proportional to the prediction."""
    rng = np.random.default_rng(3)
    metres = rng.uniform(0.5, 20.0, (40, 50)).astype(np.float32)
    spots = [(3, 4), (10, 30), (45, 7), (25, 25), (30, 38), (5, 35)]
    points = [(x, y, 2.0 * float(metres[y, x]) * (1 + 0.01 * (-1) ** i)) for i, (x, y) in enumerate(spots)]
    points += [(12, 12, 300.0), (40, 30, 0.01)]
    fit = align(metres, points, metric=True)
    assert fit.in_metres and fit.shift == 0.0 and abs(fit.scale - 2.0) < 0.01
    assert {(p.x, p.y) for p in fit.rejected} == {(12, 12), (40, 30)}
    np.testing.assert_allclose(metric_depth(metres, fit), metres * fit.scale, rtol=1e-6)
    assert fit.residual_m < 0.02 * 2 * float(metres.max())


def test_a_metric_models_points_that_agree_on_no_scale_are_refused():
    metres = np.linspace(1.0, 10.0, 400, dtype=np.float32).reshape(20, 20)
    points = [(1, 1, 1.0), (10, 10, 50.0), (18, 3, 0.02)]
    with pytest.raises(AlignmentError, match="do not agree on one scale: at most 1 of 3"):
        align(metres, points, metric=True)


@pytest.mark.parametrize("in_metres", [False, True])
def test_metric_summary_is_the_metric_maps_own_min_max_median(in_metres):
    """The summary a served answer carries equals the map's nanmin/nanmax/nanmedian exactly,
    for a relative model's inverse-depth fit (with pixels of no distance) and a metric
    model's scale-only fit in metres."""
    rng = np.random.default_rng(3)
    depth = rng.uniform(-0.5, 4.0, (61, 83)).astype(np.float32)
    fit = metric.Alignment(scale=1.7, shift=0.0 if in_metres else -0.3, used=(), rejected=(), residual_m=0.0,
                           in_metres=in_metres)
    metres = metric_depth(depth, fit)
    got = metric.metric_summary(depth, fit)
    assert np.isnan(metres).any()
    assert got == {"min": float(np.nanmin(metres)), "max": float(np.nanmax(metres)),
                   "median": float(np.nanmedian(metres.astype(np.float64)))}
    assert metric.metric_summary(np.full((4, 4), -1.0, np.float32), fit) is None  # no pixel has a distance
    if in_metres:  # metres past float32 count as no distance, without a warning
        huge = metric.Alignment(scale=3e38, shift=0.0, used=(), rejected=(), residual_m=0.0, in_metres=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = metric.metric_summary(np.array([[2.0, 0.5]], np.float32), huge)
        assert got == dict.fromkeys(("min", "max", "median"), float(np.float32(0.5) * np.float32(3e38)))
