"""Fidelity and speed of a quantized model against its fp32 source.

Depth from MiDaS is relative (unknown scale and shift), so the INT8 output is first aligned
to the fp32 output by least squares, as MiDaS's own evaluation aligns predictions to ground
truth; then AbsRel = mean |aligned - ref| / ref and delta1 = share of pixels with
max(aligned/ref, ref/aligned) < 1.25, over pixels where ref is above 5% of its max (inverse
depth near zero is the far sky, where ratios mean nothing).
"""

from __future__ import annotations

import time

import numpy as np

from runtime.metadata import INPUT_NAME

VALID_FRACTION = 0.05


def align_scale_shift(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a = np.stack([pred.ravel().astype(np.float64), np.ones(pred.size)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(a, ref.ravel().astype(np.float64), rcond=None)
    return (scale * pred + shift).astype(np.float32)


def compare(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(AbsRel, delta1) of one prediction against its reference."""
    aligned = align_scale_shift(pred, ref)
    mask = ref > VALID_FRACTION * float(ref.max())
    if not mask.any():
        return 0.0, 1.0
    r, p = ref[mask], aligned[mask]
    absrel = float(np.mean(np.abs(p - r) / r))
    ratio = np.maximum(p / r, r / np.maximum(p, 1e-12))
    return absrel, float(np.mean(ratio < 1.25))


def fidelity(ref_session, test_session, inputs: list[np.ndarray]) -> dict[str, float]:
    scores = [
        compare(test_session.run(None, {INPUT_NAME: x})[0], ref_session.run(None, {INPUT_NAME: x})[0])
        for x in inputs
    ]
    absrel = [s[0] for s in scores]
    delta1 = [s[1] for s in scores]
    return {
        "images": len(inputs),
        "mean_absrel": float(np.mean(absrel)),
        "worst_absrel": float(np.max(absrel)),
        "mean_delta1": float(np.mean(delta1)),
        "worst_delta1": float(np.min(delta1)),
    }


def latencies(sessions: dict, x: np.ndarray, runs: int = 20, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median/min milliseconds per session, runs interleaved so machine drift hits all alike."""
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, {INPUT_NAME: x})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {INPUT_NAME: x})
            times[name].append((time.perf_counter() - t) * 1000)
    return {n: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)), "runs": runs} for n, v in times.items()}
