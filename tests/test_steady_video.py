"""Steady video colours (runtime.depth.steady): each frame aligned to a running reference by a
robust scale-and-shift fit, a smoothed range, and a restart at scene cuts. Measured on the
trained-like proxy network (``tests/proxy_model.py``; NOT MiDaS): the untrained recipe
network is chaotic under sensor noise and cannot show steadiness."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from runtime import DepthHeatmapper
from runtime.depth.align import fit_scale_shift
from runtime.outputs.postprocess import colorize
from runtime.depth.steady import SteadyNormalizer, robust_fit
from tests.proxy_model import proxy_model  # noqa: F401  (session fixture)

FRAMES = 30


@pytest.fixture(scope="module")
def hm(proxy_model):  # noqa: F811
    return DepthHeatmapper(proxy_model, threads=2)


@pytest.fixture(scope="module")
def steady_clip(hm):
    """The issue's clip, 30 frames at 640x480: noise, a 15% brightness step at frame 15, a
    bright patch over frames 10-19."""
    from benchmarks.video_stability import synthetic_clip

    frames = synthetic_clip(FRAMES)
    return frames, [hm.predict(f).depth for f in frames]


@pytest.fixture(scope="module")
def cut_clip(hm):
    """One photo, then another from frame 15 on (each with noise)."""
    from benchmarks.video_stability import synthetic_clip

    frames = synthetic_clip(FRAMES, cut_at=FRAMES // 2)
    return frames, [hm.predict(f).depth for f in frames]


def test_aligned_video_beats_per_frame_and_old_video_on_the_biggest_jump(steady_clip):
    from benchmarks.video_stability import stability

    frames, depths = steady_clip
    r = {mode: stability(depths, mode, frames) for mode in ("frame", "video-old", "video")}
    assert r["video"]["biggest_jump"] < 0.75 * r["frame"]["biggest_jump"], r
    assert r["video"]["biggest_jump"] < r["video-old"]["biggest_jump"], r
    # where the scene did not change (only light and noise), the colours hold still
    assert r["video"]["held_jump"] < r["frame"]["held_jump"] / 4, r
    assert r["video"]["held_jump"] < r["video-old"]["held_jump"] / 2, r
    assert r["video"]["range_drift"] < r["frame"]["range_drift"] / 4, r
    assert r["video"]["cuts"] == [], "a brightness step or a patch is not a new scene"


def test_a_scene_cut_restarts_the_reference_and_the_range(cut_clip):
    from benchmarks.video_stability import stability

    frames, depths = cut_clip
    cut = FRAMES // 2
    with_images = stability(depths, "video", frames, cut)
    assert with_images["cuts"] == [cut], with_images
    depth_only = stability(depths, "video", None, cut)  # the fit's residual alone finds it too
    assert depth_only["cuts"] == [cut], depth_only
    old = stability(depths, "video-old", frames, cut)
    frame = stability(depths, "frame", frames, cut)
    assert with_images["drag"] < old["drag"] / 2, (with_images, old)  # the old range is not dragged in
    assert with_images["held_jump"] < frame["held_jump"] / 4, (with_images, frame)


def test_a_fast_pan_is_not_a_cut_and_stays_steady(hm):
    """20 pixels per frame (600 px/s at 30 fps): the view changes all the time, but it is one
    scene: no restart, and the mean level moves far less than with per-frame colours."""
    from benchmarks.video_stability import stability, synthetic_clip

    frames = synthetic_clip(16, pan=20)
    depths = [hm.predict(f).depth for f in frames]
    video, frame = stability(depths, "video", frames, pan=20), stability(depths, "frame", frames, pan=20)
    assert video["cuts"] == [], video
    assert video["biggest_jump"] < frame["biggest_jump"] / 2, (video, frame)


def test_histogram_alone_finds_a_cut_the_depth_fit_would_miss(cut_clip):
    """Depth maps of different scenes can look alike; the input's colours then tell."""
    frames, depths = cut_clip
    cut = FRAMES // 2
    blind = SteadyNormalizer(cut_residual=1.0)  # residual test off
    found = [i for i, (d, f) in enumerate(zip(depths, frames)) if blind.update(d, f).cut and i]
    assert found == [cut]
    neither = SteadyNormalizer(cut_residual=1.0, cut_histogram=2.0)
    assert [i for i, (d, f) in enumerate(zip(depths, frames)) if neither.update(d, f).cut and i] == []


def test_what_moves_does_not_pull_the_fit(steady_clip):
    """A frame that is the reference at another scale and shift, with a fifth of it replaced
    by a near object: the robust fit recovers the scale and shift, plain least squares not."""
    depth = steady_clip[1][0].astype(np.float64)
    ref = 0.6 * depth + 4.0
    moved = depth.copy()
    h, w = depth.shape
    moved[h // 4:h // 4 + h // 2, w // 4:w // 4 + int(w * 0.4)] = depth.max() * 1.5  # 20% of the frame
    scale, shift, _ = robust_fit(moved.ravel(), ref.ravel())
    assert scale == pytest.approx(0.6, rel=0.01) and shift == pytest.approx(4.0, abs=0.01 * np.ptp(ref))
    plain_scale, _ = fit_scale_shift(moved, ref)
    assert abs(plain_scale - 0.6) > 0.06


def test_a_moved_camera_does_not_shrink_the_scale(steady_clip):
    """The same depth seen 40 pixels further right: a least-squares slope shrinks (0.80 on
    the proxy) and, fed back through the reference frame after frame, would flatten the
    colours; the spread-matched scale stays nearer 1."""
    depth = steady_clip[1][0].astype(np.float64)
    moved, ref = np.roll(depth, 40, axis=1)[:, 40:-40], depth[:, 40:-40]
    scale, _, _ = robust_fit(moved.ravel()[::7], ref.ravel()[::7])
    plain = fit_scale_shift(moved, ref)[0]
    assert plain < 0.85 and 1 - scale < (1 - plain) / 1.5, (scale, plain)


def test_colouring_network_depth_equals_colouring_aligned_depth(steady_clip):
    steady = SteadyNormalizer()
    for d in steady_clip[1][:5]:
        s = steady.update(d)
    assert s.scale != 1.0 and not s.cut
    a = s.colorize(d, cv2.COLORMAP_INFERNO).astype(int)
    b = colorize(s.aligned(d), cv2.COLORMAP_INFERNO, (s.lo, s.hi)).astype(int)
    assert (np.abs(a - b) > 8).mean() < 1e-3  # float rounding moves a rare pixel by one level
    np.testing.assert_allclose(s.aligned(d), s.scale * d + s.shift, rtol=1e-5)


def test_a_new_size_or_a_flat_frame_restarts(steady_clip):
    steady = SteadyNormalizer()
    d = steady_clip[1][0]
    assert steady.update(d).cut and not steady.update(d).cut
    assert steady.update(cv2.resize(d, (320, 240))).cut
    flat = steady.update(np.full((240, 320), 3.0, np.float32))
    assert flat.cut and flat.lo == flat.hi == 3.0
    assert steady.update(cv2.resize(d, (320, 240))).cut  # nothing fits a flat reference
    heat = flat.colorize(np.full((240, 320), 3.0, np.float32), cv2.COLORMAP_INFERNO)
    assert heat.shape == (240, 320, 3)


def test_cost_per_frame_is_bounded(steady_clip):
    """About 4,800 samples whatever the frame size: ~1.4 ms per 640x480 frame."""
    frames, depths = steady_clip
    steady = SteadyNormalizer()
    assert steady._sample(np.zeros((2160, 3840), np.float32)).size < 6000
    steady.update(depths[0], frames[0])
    times = []
    for d, f in zip(depths[1:], frames[1:]):
        t = time.perf_counter()
        steady.update(d, f)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 0.005, times  # 1.4 ms measured; generous for a busy shared CPU
