"""Steady video colours: each frame's depth aligned to a running reference, then one range.

MiDaS predicts relative inverse depth, so every frame comes with its own unknown scale and
shift. Colouring frames through a range smoothed over time (``postprocess.SteadyRange``)
still shows every frame-wide change of that scale or shift as a colour jump. Here each frame
is first mapped onto a running reference, ``aligned = scale * depth + shift``, by a robust
fit (``runtime.depth.align.fit_scale_shift``, iteratively reweighted with Tukey's biweight so
what moves does not pull it), and only then coloured through a smoothed percentile range.

The fit uses a grid of about ``samples`` block means (4,800 by default; a 640x480 frame
costs ~1.4 ms with the histogram test, median on 2 EPYC cores), and the reference is a
running average of the aligned frames at those samples, so no full-size array is kept
between frames. A scene cut (the aligned frame differs too much from the previous one, or
the input frame's colour histogram changes abruptly) restarts the reference and the range
from the new frame, so a new scene is not dragged into the old range.

One ``SteadyNormalizer`` per video or per live connection:

    steady = SteadyNormalizer()
    for image in frames:
        depth = hm.predict(image).depth
        s = steady.update(depth, image)               # image optional: histogram cut test
        heat = s.colorize(depth, colormap)            # == colorize(s.aligned(depth), cm, (s.lo, s.hi))
        aligned = s.aligned(depth)                    # only when aligned depth files are wanted
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .align import fit_scale_shift
from ..outputs.postprocess import colorize

# Tukey biweight cut-off in robust standard deviations: 95% efficiency on Gaussian residuals.
_TUKEY_C = 4.685
_MAD_TO_SIGMA = 1.4826
_IRLS_ROUNDS = 4


@dataclass(frozen=True)
class SteadyFrame:
    """How to colour one frame.

    scale, shift: ``aligned = scale * depth + shift`` maps the frame onto the reference
        (scale is always positive).
    lo, hi: the colour range in aligned units.
    cut: this frame started a new reference (the first frame, a scene cut or a new size).
    residual: the median absolute difference between this aligned frame and the previous
        one (both blurred), as a share of the reference's 1-99% range (0 on a cut).
    """

    scale: float
    shift: float
    lo: float
    hi: float
    cut: bool
    residual: float

    @property
    def value_range(self) -> tuple[float, float]:
        """The colour range in the frame's own (network) units, for ``colorize(depth, cm,
        value_range)``: the same heatmap as colouring the aligned depth, without making it."""
        return ((self.lo - self.shift) / self.scale, (self.hi - self.shift) / self.scale)

    def aligned(self, depth: np.ndarray) -> np.ndarray:
        """The frame's depth in the reference's units (float32, a new array)."""
        out = np.multiply(depth, np.float32(self.scale), dtype=np.float32)
        out += np.float32(self.shift)
        return out

    def colorize(self, depth: np.ndarray, colormap: int) -> np.ndarray:
        """The steady heatmap of the frame's network depth (uint8 BGR)."""
        return colorize(depth, colormap, self.value_range)


class SteadyNormalizer:
    """Per-video (or per-connection) state for steady colours; not thread-safe.

    Args:
        keep: share of the previous colour range kept each frame (0.9: the range follows a
            real change within ~10 frames and ignores one-frame ones).
        ref_keep: share of the previous reference kept each frame; the reference follows the
            scene as it changes, while a single frame cannot move it far.
        low: percentile of the aligned samples that sets the colour range's near-black end.
        high: percentile of the aligned samples that sets the colour range's bright end.
        samples: about how many pixels the fit and the percentiles use.
        cut_residual: a frame whose aligned depth, blurred, differs from the previous aligned
            frame, blurred, by more than this share of the reference's range (median over
            the samples) is a scene cut. Against the previous frame, not the running
            reference, which lags a moving camera by a few frames; blurred, so that motion
            matters less than content. Measured on the trained-like proxy (INT8, 640x480):
            at most 0.026 within one scene (noise, a brightness step, a patch appearing),
            0.041 in a pan of 20 pixels per frame, 0.070 across a cut between two photos
            (their depth maps still look alike).
        cut_histogram: Bhattacharyya distance between consecutive frames' hue-saturation
            histograms above which the input is a new scene (measured: 0.05-0.09 from sensor
            noise, 0.12 for a 15% brightness step, 0.19 for a patch covering 6% of the frame
            appearing; 0.59 across the cut between two photos).

    ``frames`` counts the frames seen, ``cuts`` the restarts (the first frame included).
    Frames must come in order: one normaliser per video or connection, fed from one thread.
    """

    def __init__(self, keep: float = 0.9, ref_keep: float = 0.8, low: float = 1.0, high: float = 99.0,
                 samples: int = 4800, cut_residual: float = 0.055, cut_histogram: float = 0.35) -> None:
        if not 0 <= keep < 1 or not 0 <= ref_keep < 1 or not 0 <= low < high <= 100 or samples < 16:
            raise ValueError("need 0 <= keep, ref_keep < 1, 0 <= low < high <= 100 and samples >= 16")
        self.keep, self.ref_keep, self.low, self.high = keep, ref_keep, low, high
        self.samples, self.cut_residual, self.cut_histogram = samples, cut_residual, cut_histogram
        self.frames = self.cuts = 0
        self.reset()

    def reset(self) -> None:
        """Forget the reference and the range: the next frame starts afresh."""
        self._shape: tuple[int, ...] | None = None
        self._ref: np.ndarray | None = None  # running average of the aligned samples
        self._prev: np.ndarray | None = None  # the previous frame's aligned samples
        self._range: tuple[float, float] | None = None
        self._hist: np.ndarray | None = None
        self._grid = (0, 0)  # (columns, rows) of the last frame's samples

    def update(self, depth: np.ndarray, image: np.ndarray | None = None) -> SteadyFrame:
        """Fold in one frame's network depth (HxW); ``image`` (the input frame, uint8 BGR or
        gray, any size) adds the histogram test for scene cuts. Returns how to colour it."""
        if depth.ndim != 2:
            raise ValueError(f"depth must be HxW, got shape {depth.shape}")
        self.frames += 1
        pred = self._sample(depth)
        hist_cut = self._histogram_cut(image)
        fit = None
        if self._ref is not None and depth.shape == self._shape and not hist_cut:
            fit = robust_fit(pred, self._ref)
        if fit is None:
            return self._restart(depth.shape, pred)
        scale, shift = fit[0], fit[1]
        aligned = scale * pred + shift
        moved = np.abs(self._smooth(aligned) - self._smooth(self._prev))
        residual = float(np.median(moved)) / max(self._ref_span(), 1e-12)
        if residual > self.cut_residual:
            return self._restart(depth.shape, pred)
        self._prev = aligned
        self._ref = self.ref_keep * self._ref + (1 - self.ref_keep) * aligned
        lo, hi = self._percentiles(aligned)
        self._range = (self.keep * self._range[0] + (1 - self.keep) * lo,
                       self.keep * self._range[1] + (1 - self.keep) * hi)
        return SteadyFrame(scale, shift, *self._range, cut=False, residual=residual)

    # -- internals ---------------------------------------------------------------------------
    def _sample(self, depth: np.ndarray) -> np.ndarray:
        """The frame as a grid of ~``samples`` block means (float64, for the fit): area
        averaging, so no pixel's noise or aliasing decides a sample."""
        step = max(1, int(round(np.sqrt(depth.size / self.samples))))
        grid = (max(1, depth.shape[1] // step), max(1, depth.shape[0] // step))
        self._grid = grid
        return cv2.resize(np.asarray(depth, np.float32), grid, interpolation=cv2.INTER_AREA).astype(np.float64).ravel()

    def _smooth(self, samples: np.ndarray) -> np.ndarray:
        """Samples blurred over a quarter of the frame's shorter side: a camera moving a few
        dozen pixels leaves that nearly unchanged, a new scene does not."""
        w, h = self._grid
        k = max(1, (min(w, h) // 4) | 1)
        return cv2.blur(samples.reshape(h, w), (k, k)).ravel()

    def _restart(self, shape: tuple[int, ...], pred: np.ndarray) -> SteadyFrame:
        """A new reference from this frame, in its own units; its own range, unsmoothed."""
        self.cuts += 1
        self._shape, self._ref, self._prev = shape, pred, pred
        lo, hi = self._percentiles(pred)
        self._range = (lo, hi)
        return SteadyFrame(1.0, 0.0, lo, hi, cut=True, residual=0.0)

    def _percentiles(self, values: np.ndarray) -> tuple[float, float]:
        lo, hi = (float(v) for v in np.percentile(values, [self.low, self.high]))
        return lo, hi

    def _ref_span(self) -> float:
        lo, hi = self._percentiles(self._ref)
        return hi - lo

    def _histogram_cut(self, image: np.ndarray | None) -> bool:
        """Whether the input frame's colours changed like a new scene's (and remember them)."""
        if image is None:
            return False
        hist = colour_histogram(image, self.samples)
        previous, self._hist = self._hist, hist
        if previous is None:
            return False
        return float(cv2.compareHist(previous, hist, cv2.HISTCMP_BHATTACHARYYA)) > self.cut_histogram


def robust_fit(pred: np.ndarray, target: np.ndarray, rounds: int = _IRLS_ROUNDS) -> tuple[float, float, float] | None:
    """``(scale, shift, median |residual|)`` of ``target ~ scale * pred + shift``, robust to
    a minority of samples that disagree (moving objects), or None when no positive scale
    fits (a flat frame or reference, or an inverted one: not the same scene).

    Starts from the median/MAD match (unmoved by up to half the samples), then reweights
    with Tukey's biweight for ``rounds`` rounds of ``fit_scale_shift``; samples more than
    ~4.7 robust standard deviations off get no weight, so an object that moves does not
    pull the fit. The scale returned matches the weighted spreads (``fit_scale_shift``'s
    slope divided by the weighted correlation): a least-squares slope shrinks towards 0 as
    frame and reference agree less pixel by pixel (a moving camera), and fed back through
    the running reference that shrinking compounds until the colours collapse.
    """
    fit = _median_fit(pred, target)
    if fit is None:
        return None
    scale, shift = fit
    weights = None
    for _ in range(rounds):
        resid = target - (scale * pred + shift)
        sigma = _MAD_TO_SIGMA * float(np.median(np.abs(resid)))
        if sigma <= 1e-12 * max(1.0, float(np.abs(target).max())):
            break
        u = resid / (_TUKEY_C * sigma)
        weights = np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        fit = fit_scale_shift(pred, target, weights)
        if fit is None:
            return None
        scale, shift = fit
    if not scale > 0:
        return None
    scale, shift = _spread_match(pred, target, weights)
    return scale, shift, float(np.median(np.abs(target - (scale * pred + shift))))


def _spread_match(pred: np.ndarray, target: np.ndarray, weights: np.ndarray | None) -> tuple[float, float]:
    """Scale = ratio of the weighted standard deviations, shift = weighted means matched."""
    mp, mt = float(np.average(pred, weights=weights)), float(np.average(target, weights=weights))
    sp = float(np.average((pred - mp) ** 2, weights=weights)) ** 0.5
    st = float(np.average((target - mt) ** 2, weights=weights)) ** 0.5
    scale = st / sp
    return scale, mt - scale * mp


def _median_fit(pred: np.ndarray, target: np.ndarray) -> tuple[float, float] | None:
    """Scale from the ratio of median absolute deviations, shift from the medians."""
    mp, mt = float(np.median(pred)), float(np.median(target))
    sp, st = float(np.median(np.abs(pred - mp))), float(np.median(np.abs(target - mt)))
    if sp <= 1e-12 * max(1.0, abs(mp)) or st <= 1e-12 * max(1.0, abs(mt)):
        return None
    return st / sp, mt - st / sp * mp


def colour_histogram(image: np.ndarray, samples: int = 4800) -> np.ndarray:
    """Normalised 16x16 hue-saturation histogram of ~``samples`` pixels of a BGR frame (gray:
    a 32-bin intensity histogram). Hue and saturation barely move when the light changes
    (a brightness step of 15% is ~0.05 in Bhattacharyya distance), a new scene moves them.
    Gray frames use intensity relative to the frame's mean, for the same reason."""
    step = max(1, int(round(np.sqrt(image.shape[0] * image.shape[1] / samples))))
    small = np.ascontiguousarray(image[::step, ::step])
    if small.dtype != np.uint8:
        small = cv2.convertScaleAbs(small, alpha=255.0 / max(1.0, float(small.max())))
    if small.ndim == 3 and small.shape[2] >= 3:
        hsv = cv2.cvtColor(small[:, :, :3], cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [16, 16], [0, 180, 0, 256])
    else:
        gray = small.reshape(small.shape[0], -1)
        mean = max(1.0, float(gray.mean()))  # gray: intensity relative to the mean, so light changes
        gray = cv2.convertScaleAbs(gray, alpha=96.0 / mean)  # cancel
        hist = cv2.calcHist([gray], [0], None, [32], [0, 256])
    return cv2.normalize(hist, None, 1.0, 0.0, cv2.NORM_L1)
