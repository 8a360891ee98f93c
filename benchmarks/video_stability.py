"""How steady a heatmap video's colours are, for three ways of choosing each frame's colours:

- ``frame``: each frame's own min/max (`--normalize frame`);
- ``video-old``: robust percentiles smoothed over time, each frame's scale and shift left as
  the network gives them (``runtime.outputs.postprocess.SteadyRange``);
- ``video``: each frame aligned to a running reference by a robust scale-and-shift fit, then
  the smoothed range (``runtime.depth.steady.SteadyNormalizer``; `--normalize video`).

    python -m benchmarks.video_stability models/midas_small.int8.onnx [--frames 60]

Three synthetic, reproducible 640x480 clips. ``steady``: a scikit-image photo with
sensor-like noise, a 15% brightness step at the middle frame and a bright patch over the
second third of the frames (as issue #23 describes its clip). ``cut``: the same photo, then a
different photo from the middle frame on (a scene cut), each with noise. ``pan``: a camera
panning across a larger photo at 20 pixels per frame (a fast pan: 600 pixels/s at 30 fps),
which must not be taken for cuts.

Figures, per clip and mode:
- biggest jump: the largest change of the mean heatmap level (0-255) between two
  consecutive frames; ``held``: the same without the frames where the scene really changes
  (the patch appears or goes, the cut), where a steady video must show the change, so what
  is left is the jump the colouring adds when nothing moved but the light and the noise;
- range drift: the frame-to-frame change of the colour range's two ends, as a share of the
  clip's whole depth range, in the units the frames are coloured in (network units for
  ``frame``/``video-old``, reference units for ``video``), mean over frames;
- flicker: the mean absolute change between consecutive heatmap frames (0-255 per channel);
- cuts: frames where ``video`` restarted its reference (it must be exactly the cut frame);
- drag: on the cut clip, the mean |heatmap level - per-frame level| over the 10 frames after
  the cut: how much the old scene's range still colours the new one.
"""

from __future__ import annotations

import argparse

import numpy as np

MODES = ("frame", "video-old", "video")
SIZE = (640, 480)


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A scikit-image photo as float32 BGR at ``size``; a synthetic scene without scikit-image."""
    import cv2

    try:
        import skimage.data

        base = getattr(skimage.data, name)()[:, :, ::-1]
    except ImportError:
        yy, xx = np.mgrid[0:240, 0:320]
        k = {"coffee": 1, "chelsea": 3, "astronaut": 5}.get(name, 7)
        base = np.dstack([(xx * k) % 256, yy % 256, (xx + k * yy) % 256]).astype(np.uint8)
    return cv2.resize(np.ascontiguousarray(base), size, interpolation=cv2.INTER_AREA).astype(np.float32)


def synthetic_clip(frames: int = 60, size: tuple[int, int] = SIZE, seed: int = 0,
                   cut_at: int | None = None, pan: int = 0) -> list[np.ndarray]:
    """BGR uint8 frames of one photo with noise (sigma 4 levels). By default: a 15%
    brightness step at the middle frame and a bright patch (a quarter of the width and
    height) over the second third of the frames. With ``cut_at``: a second photo from that
    frame on, nothing else changing. With ``pan``: a window moving right by ``pan`` pixels
    per frame across a wider photo, nothing else changing."""
    import cv2

    rng = np.random.default_rng(seed)
    if pan:
        w, h = size
        wide = _photo("astronaut", (w + pan * frames, h))
        return [np.clip(wide[:, pan * t:pan * t + w] + rng.normal(0, 4.0, (h, w, 3)), 0, 255).astype(np.uint8)
                for t in range(frames)]
    w, h = size
    scenes = (_photo("coffee", size), _photo("chelsea", size))
    out = []
    for t in range(frames):
        if cut_at is not None:
            img = scenes[1 if t >= cut_at else 0].copy()
        else:
            img = scenes[0] * (1.15 if t >= frames // 2 else 1.0)
            if frames // 3 <= t < 2 * frames // 3:
                cv2.rectangle(img, (w // 8, h // 2), (w // 8 + w // 4, h // 2 + h // 4), (250, 250, 250), -1)
        img = img + rng.normal(0, 4.0, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def content_changes(frames: int, cut_at: int | None = None, pan: int = 0) -> list[int]:
    """Frames where ``synthetic_clip``'s scene itself changes at once (a jump there is real)."""
    if pan:
        return []
    return [cut_at] if cut_at is not None else [frames // 3, 2 * frames // 3]


def colour_ranges(depths: list[np.ndarray], mode: str, images: list[np.ndarray] | None = None):
    """Per frame: (depth as coloured, (lo, hi) in its units, restarted here). ``video`` colours
    the aligned depth (the same heatmap as ``SteadyFrame.colorize`` on the network depth)."""
    from runtime.outputs.postprocess import SteadyRange, depth_range
    from runtime.depth.steady import SteadyNormalizer

    if mode == "frame":
        return [(d, depth_range(d), False) for d in depths]
    if mode == "video-old":
        old = SteadyRange()
        return [(d, old.update(d), False) for d in depths]
    if mode != "video":
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    steady = SteadyNormalizer()
    out = []
    for i, d in enumerate(depths):
        s = steady.update(d, None if images is None else images[i])
        out.append((s.aligned(d), (s.lo, s.hi), s.cut))
    return out


def stability(depths: list[np.ndarray], mode: str, images: list[np.ndarray] | None = None,
              cut_at: int | None = None, pan: int = 0) -> dict:
    """Biggest jump of the mean level, range drift, flicker (and cut figures) for one mode."""
    import cv2

    from runtime.outputs.postprocess import colorize, to_levels

    coloured = colour_ranges(depths, mode, images)
    levels = [to_levels(d, 255, np.uint8, r) for d, r, _ in coloured]
    means = np.array([lv.mean() for lv in levels])
    jumps = np.abs(np.diff(means))
    span = max(float(d.max()) for d, _, _ in coloured) - min(float(d.min()) for d, _, _ in coloured)
    lo, hi = np.array([r for _, r, _ in coloured]).T
    drift = float(np.mean((np.abs(np.diff(lo)) + np.abs(np.diff(hi))) / 2) / span) if span > 0 else 0.0
    heat = [colorize(d, cv2.COLORMAP_INFERNO, r).astype(np.int16) for d, r, _ in coloured]
    flicker = float(np.mean([np.abs(b - a).mean() for a, b in zip(heat, heat[1:])]))
    out = {"biggest_jump": float(jumps.max()), "range_drift": drift, "flicker": flicker,
           "cuts": [i for i, (_, _, c) in enumerate(coloured) if c and i > 0]}
    out["held_jump"] = float(np.delete(jumps, [i - 1 for i in content_changes(len(depths), cut_at, pan)]).max())
    if cut_at is not None:
        per_frame = [to_levels(d, 255, np.uint8) for d in depths[cut_at:cut_at + 10]]
        out["drag"] = float(np.mean([np.abs(a.astype(np.int16) - b).mean()
                                     for a, b in zip(levels[cut_at:cut_at + 10], per_frame)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    from runtime import DepthHeatmapper
    from runtime.model.cpu import cpu_name, int8_flags

    hm = DepthHeatmapper(args.model)
    print(f"{args.model} ({hm.info.precision}), {args.frames} frames at {SIZE[0]}x{SIZE[1]}; "
          f"CPU {cpu_name()} ({' '.join(int8_flags())})")
    print("| clip | normalize | biggest jump (mean level, 0-255) | held (scene unchanged) | range drift | "
          "flicker | restarts at | drag after cut |")
    print("|---|---|---|---|---|---|---|---|")
    for clip, cut_at, pan in (("steady", None, 0), ("cut", args.frames // 2, 0), ("pan", None, 20)):
        frames = synthetic_clip(args.frames, cut_at=cut_at, pan=pan)
        depths = [hm.predict(f).depth for f in frames]
        for mode in MODES:
            r = stability(depths, mode, frames, cut_at, pan)
            drag = f"{r['drag']:.1f}" if cut_at is not None else "-"
            print(f"| {clip} | {mode} | {r['biggest_jump']:.2f} | {r['held_jump']:.2f} | {r['range_drift']:.4f} | "
                  f"{r['flicker']:.2f} | {r['cuts'] if mode == 'video' else '-'} | {drag} |")


if __name__ == "__main__":
    main()
