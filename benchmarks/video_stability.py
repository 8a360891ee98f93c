"""How steady a heatmap video's colours are: `--normalize frame` (each frame's min/max) against
`--normalize video` (robust percentiles carried across frames, ``runtime.postprocess.SteadyRange``).

    python -m benchmarks.video_stability models/midas_small.onnx [--frames 60]

The clip is synthetic and reproducible: a scikit-image photo with sensor-like noise, a
brightness ramp (0.8x to 1.2x) and a bright disc passing through. For each mode:
(a) range drift: the frame-to-frame change of the colour mapping's low and high ends, as a
share of the clip's whole depth range (mean over frames); (b) flicker: the mean absolute
change between consecutive heatmap frames (0-255 per channel).
"""

from __future__ import annotations

import argparse

import numpy as np

MODES = ("frame", "video")


def synthetic_clip(frames: int = 60, size: tuple[int, int] = (320, 240), seed: int = 0) -> list[np.ndarray]:
    """BGR uint8 frames: noise, a brightness ramp and a bright object moving left to right."""
    import cv2

    try:
        import skimage.data

        base = skimage.data.coffee()[:, :, ::-1]
    except ImportError:  # the runtime alone: a smooth synthetic scene instead
        yy, xx = np.mgrid[0:240, 0:320]
        base = np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8)
    base = cv2.resize(base, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for t in range(frames):
        img = base * (0.8 + 0.4 * t / max(1, frames - 1))
        cx = int(-40 + (w + 80) * t / max(1, frames - 1))
        cv2.circle(img, (cx, h // 2), max(8, h // 10), (255, 255, 255), -1)
        img += rng.normal(0, 4.0, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def colour_ranges(depths: list[np.ndarray], mode: str) -> list[tuple[float, float]]:
    """The (lo, hi) each frame is coloured with, as `midas-onnx heatmap --normalize MODE` does."""
    from runtime.postprocess import SteadyRange, depth_range

    if mode == "frame":
        return [depth_range(d) for d in depths]
    steady = SteadyRange()
    return [steady.update(d) for d in depths]


def stability(depths: list[np.ndarray], mode: str, colormap: int | None = None) -> dict[str, float]:
    """Range drift (share of the clip's range per frame) and heatmap flicker (levels per frame)."""
    import cv2

    from runtime.postprocess import colorize

    colormap = cv2.COLORMAP_INFERNO if colormap is None else colormap
    ranges = colour_ranges(depths, mode)
    span = max(float(d.max()) for d in depths) - min(float(d.min()) for d in depths)
    lo, hi = np.array(ranges).T
    drift = float(np.mean((np.abs(np.diff(lo)) + np.abs(np.diff(hi))) / 2) / span) if span > 0 else 0.0
    heat = [colorize(d, colormap, r).astype(np.int16) for d, r in zip(depths, ranges, strict=True)]
    flicker = float(np.mean([np.abs(b - a).mean() for a, b in zip(heat, heat[1:])]))
    return {"range_drift": drift, "flicker": flicker}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    from runtime import DepthHeatmapper
    from runtime.cpu import cpu_name, int8_flags

    hm = DepthHeatmapper(args.model)
    depths = [hm.predict(f).depth for f in synthetic_clip(args.frames)]
    print(f"{args.model}, {args.frames} frames at 320x240; CPU {cpu_name()} ({' '.join(int8_flags())})")
    print("| normalize | range drift (share of range per frame) | flicker (mean |change| per frame, 0-255) |")
    print("|---|---|---|")
    for mode in MODES:
        r = stability(depths, mode)
        print(f"| {mode} | {r['range_drift']:.4f} | {r['flicker']:.2f} |")


if __name__ == "__main__":
    main()
