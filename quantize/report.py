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


def fidelity(ref_session, test_session, inputs: list[np.ndarray]) -> dict:
    """AbsRel and delta1 over all inputs, and per network shape (dynamic models see several)."""
    scores = [
        compare(test_session.run(None, {INPUT_NAME: x})[0], ref_session.run(None, {INPUT_NAME: x})[0])
        for x in inputs
    ]
    shapes = ["x".join(map(str, x.shape[2:])) for x in inputs]
    out = _summary(scores)
    out["by_shape"] = {shape: _summary([s for s, sh in zip(scores, shapes, strict=True) if sh == shape])
                       for shape in sorted(set(shapes))}
    return out


def _summary(scores: list[tuple[float, float]]) -> dict:
    absrel = [s[0] for s in scores]
    delta1 = [s[1] for s in scores]
    return {
        "images": len(scores),
        "mean_absrel": float(np.mean(absrel)),
        "worst_absrel": float(np.max(absrel)),
        "mean_delta1": float(np.mean(delta1)),
        "worst_delta1": float(np.min(delta1)),
    }


def timing_shapes(input_hw: tuple[int, int] | None) -> list[tuple[int, int]]:
    """Where to time: a fixed model at its size; a dynamic one at 256x256 (square photos) and
    192x256 (what upstream's resize makes of a 4:3 landscape photo)."""
    return [input_hw] if input_hw is not None else [(256, 256), (192, 256)]


def latencies(sessions: dict, shapes: list[tuple[int, int]], runs: int = 20, warmup: int = 3,
              rounds: int = 2) -> dict[str, dict[str, dict[str, float]]]:
    """``{"HxW": {name: {median_ms, min_ms, runs}}}``, timed in blocks.

    Each session runs ``runs / rounds`` timed runs in a row (after ``warmup`` untimed ones),
    then the next session does; ``rounds`` such passes spread machine drift over all.
    Alternating single runs is unfair on few cores: an engine's worker threads keep
    spinning after its run and slow whichever model runs next.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    per_block = max(1, runs // rounds)
    for h, w in shapes:
        x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, s in sessions.items():
                for _ in range(warmup):
                    s.run(None, {INPUT_NAME: x})
                for _ in range(per_block):
                    t = time.perf_counter()
                    s.run(None, {INPUT_NAME: x})
                    times[name].append((time.perf_counter() - t) * 1000)
        out[f"{h}x{w}"] = {n: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)), "runs": len(v)}
                           for n, v in times.items()}
    return out
