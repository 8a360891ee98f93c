"""Scale-and-shift alignment of relative depth: the one least-squares fit in the project.

MiDaS predicts relative inverse depth: each output has its own unknown scale and shift. Every
comparison or mapping of two outputs (INT8 against fp32, a video frame against the running
reference, a prediction against known metric points) first fits ``target ~ scale * pred +
shift``; this module is where that fit lives, so all of them agree on it.
"""

from __future__ import annotations

import numpy as np


def fit_scale_shift(pred: np.ndarray, target: np.ndarray,
                    weights: np.ndarray | None = None) -> tuple[float, float] | None:
    """Least-squares ``(scale, shift)`` with ``target ~ scale * pred + shift``.

    Closed form in float64 (means and covariance), so its cost is linear in the samples and
    it never builds an Nx2 design matrix. ``weights`` (same size, >= 0) weigh each sample.
    Returns None when ``pred`` is flat (no scale can be fitted) or no sample has weight.
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if p.size != t.size:
        raise ValueError(f"pred and target differ in size: {p.size} vs {t.size}")
    w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    total = p.size if w is None else float(w.sum())
    if p.size == 0 or total <= 0:
        return None
    mp = float(np.average(p, weights=w))
    mt = float(np.average(t, weights=w))
    dp = p - mp
    var = float(np.average(dp * dp, weights=w))
    if var <= (1e-12 * max(1.0, abs(mp))) ** 2:
        return None
    scale = float(np.average(dp * (t - mt), weights=w)) / var
    return scale, mt - scale * mp


def align_to(pred: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``pred`` mapped onto ``target``'s scale and shift (float32); unchanged when flat."""
    fit = fit_scale_shift(pred, target, weights)
    if fit is None:
        return np.asarray(pred, dtype=np.float32)
    scale, shift = fit
    return (scale * np.asarray(pred, dtype=np.float64) + shift).astype(np.float32)
