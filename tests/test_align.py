"""The one scale-and-shift fit (runtime.depth.align) against numpy's general least squares."""

import numpy as np
import pytest

from runtime.depth.align import align_to, fit_scale_shift


def test_fit_matches_numpy_lstsq_on_noisy_data():
    rng = np.random.default_rng(0)
    pred = rng.random(5000) * 7 + 1
    target = -2.5 * pred + 4.0 + rng.normal(0, 0.05, pred.size)
    want = np.linalg.lstsq(np.stack([pred, np.ones_like(pred)], 1), target, rcond=None)[0]
    got = fit_scale_shift(pred, target)
    assert got is not None
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_weights_ignore_zero_weight_outliers():
    rng = np.random.default_rng(1)
    pred = rng.random(200)
    target = 2 * pred + 1
    target[:20] += 50  # outliers
    weights = np.ones(200)
    weights[:20] = 0
    scale, shift = fit_scale_shift(pred, target, weights)
    assert scale == pytest.approx(2.0) and shift == pytest.approx(1.0)
    assert fit_scale_shift(pred, target)[1] > 3  # unweighted, the outliers pull it


def test_flat_or_empty_input_gives_none_and_align_leaves_it():
    assert fit_scale_shift(np.full(10, 3.0), np.arange(10.0)) is None
    assert fit_scale_shift(np.zeros(0), np.zeros(0)) is None
    flat = np.full((4, 4), 2.0, np.float32)
    np.testing.assert_array_equal(align_to(flat, np.arange(16.0).reshape(4, 4)), flat)


def test_align_to_maps_onto_target():
    pred = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    target = 10 * pred - 3
    np.testing.assert_allclose(align_to(pred, target), target, atol=1e-5)
