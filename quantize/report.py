"""Fidelity and speed of a quantized model against its fp32 source: the one fidelity
function and the one timer of quantize/ (the layer report, the fallback search and the
benchmark use these).

Depth from MiDaS is relative (unknown scale and shift), so the INT8 output is first aligned
to the fp32 output with the project's one least-squares fit (``runtime.depth.align``), as MiDaS's
own evaluation aligns predictions to ground truth; then AbsRel = mean |aligned - ref| / ref
and delta1 = share of pixels with max(aligned/ref, ref/aligned) < 1.25, over pixels where ref
is above 5% of its max (inverse depth near zero is the far sky, where ratios mean nothing).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from runtime.depth.align import align_to
from runtime.model.metadata import INPUT_NAME, ModelInfo
from runtime.model.preprocess import network_size

VALID_FRACTION = 0.05


def compare(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(AbsRel, delta1) of one prediction against its reference."""
    aligned = align_to(pred, ref)
    mask = ref > VALID_FRACTION * float(ref.max())
    if not mask.any():
        return 0.0, 1.0
    r, p = ref[mask], aligned[mask]
    absrel = float(np.mean(np.abs(p - r) / r))
    ratio = np.maximum(p / r, r / np.maximum(p, 1e-12))
    return absrel, float(np.mean(ratio < 1.25))


def outputs(session, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The depth output for every input (kept for reuse: a few hundred KB per photo)."""
    return [session.run(None, {INPUT_NAME: x})[0] for x in inputs]


def scores(session, inputs: list[np.ndarray], refs: list[np.ndarray]) -> list[tuple[float, float]]:
    """(AbsRel, delta1) per photo of ``session`` against the reference outputs."""
    return [compare(session.run(None, {INPUT_NAME: x})[0], r) for x, r in zip(inputs, refs, strict=True)]


def summary(photo_scores: list[tuple[float, float]], names: list[str] | None = None) -> dict:
    """Mean and worst AbsRel and delta1; with ``names``, which photos they are and the worst one."""
    absrel = [s[0] for s in photo_scores]
    delta1 = [s[1] for s in photo_scores]
    out = {"images": len(photo_scores), "mean_absrel": float(np.mean(absrel)), "worst_absrel": float(np.max(absrel)),
           "mean_delta1": float(np.mean(delta1)), "worst_delta1": float(np.min(delta1))}
    if names is not None:
        out["worst_photo"] = names[int(np.argmin(delta1))]
        out["photos"] = list(names)
    return out


def fidelity(ref_session, test_session, inputs: list[np.ndarray], names: list[str]) -> dict:
    """AbsRel and delta1 over all inputs, the photos they come from, and per network shape
    (dynamic models see several)."""
    per_photo = scores(test_session, inputs, outputs(ref_session, inputs))
    shapes = ["x".join(map(str, x.shape[2:])) for x in inputs]
    out = summary(per_photo, names)
    out["by_shape"] = {shape: summary([s for s, sh in zip(per_photo, shapes, strict=True) if sh == shape])
                       for shape in sorted(set(shapes))}
    return out


LANDSCAPE_PHOTO = (480, 640)  # (H, W) of the common 4:3 landscape photo timed beside the square


def timing_shapes(info: ModelInfo) -> list[tuple[int, int]]:
    """Where to time: a fixed model at its size; a dynamic one at its rule's size square (square
    photos) and at what its rule makes of a 640x480 landscape photo (MiDaS small: 256x256 and
    192x256; Depth Anything V2 Small: 518x518 and 518x686)."""
    if info.input_hw is not None:
        return [info.input_hw]
    size = info.description.input.size
    return [(size, size), network_size(*LANDSCAPE_PHOTO, info)]


def timed(runners: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, runs: int, block: int = 5,
          pause_s: float = 0.3, budget_s: float = 8.0, min_runs: int = 5) -> dict[str, dict]:
    """Latency of each runner on ``x`` in ms: {median_ms, p95_ms, min_ms, runs}, in rounds of blocks.

    Each runner in turn runs one discarded run and then ``block`` timed runs; rounds repeat
    until each has ``runs``. Not one run at a time: torch's OpenMP, OpenVINO's and
    onnxruntime's own pools keep their threads spinning after a run, and on 2 cores those
    threads stole the CPU from whichever variant ran next (static INT8 measured 82 ms
    interleaved run by run, 54 ms alone). A pause and the discarded run at every switch let
    them go idle; rounds spread machine drift over all runners alike. A slow runner (dynamic
    INT8 takes ~1 s a run) gets as many runs as fit ``budget_s``, never under ``min_runs``.
    """
    times: dict[str, list[float]] = {n: [] for n in runners}
    target = {n: runs for n in runners}
    block = max(1, min(block, runs))
    while any(len(times[n]) < target[n] for n in runners):
        for n, run in runners.items():
            if len(times[n]) >= target[n]:
                continue
            time.sleep(pause_s)
            t = time.perf_counter()
            run(x)  # discarded: wakes this engine's threads, warms caches
            if not times[n]:
                target[n] = max(min(min_runs, runs), min(runs, int(budget_s / max(time.perf_counter() - t, 1e-6))))
            for _ in range(min(block, target[n] - len(times[n]))):
                t = time.perf_counter()
                run(x)
                times[n].append((time.perf_counter() - t) * 1000)
    return {n: {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95)),
                "min_ms": float(np.min(v)), "runs": len(v)} for n, v in times.items()}


def latencies(sessions: dict, shapes: list[tuple[int, int]], runs: int = 20,
              pause_s: float = 0.1) -> dict[str, dict[str, dict[str, float]]]:
    """``{"HxW": {name: {median_ms, p95_ms, min_ms, runs}}}`` of onnxruntime sessions, through ``timed``."""
    out = {}
    for h, w in shapes:
        x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        runners = {name: (lambda a, s=s: s.run(None, {INPUT_NAME: a})) for name, s in sessions.items()}
        out[f"{h}x{w}"] = timed(runners, x, runs, pause_s=pause_s, budget_s=60.0)
    return out
