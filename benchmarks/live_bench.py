"""Live pipe throughput and latency: raw 640x480 bgr24 frames offered at a fixed rate on a
pipe (as ``ffmpeg -re ... -f rawvideo -`` or a camera would), through ``runtime.live``
(newest frame wins), inference, steady colours (``runtime.steady``) and a raw bgr24 sink into
the next program in the pipe (``cat`` to /dev/null).

    python -m benchmarks.live_bench [models/midas_small.int8.onnx] [--seconds 10] [--rates 30,120]

For each offered rate: frames in, processed, dropped, frames per second out, and latency
from a frame's arrival (read off the pipe) to its heatmap written (p50/p95/max). At 30 fps
(a camera's rate) nothing should be dropped; above the machine's rate frames are dropped and
the latency stays about one to two frames' work instead of growing. The frame writer is a
separate process on the same CPU, as a camera driver or ffmpeg would be.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZE = (640, 480)


def emit(fps: float, seconds: float, size: tuple[int, int] = SIZE) -> None:
    """Write raw bgr24 frames of a noisy photo to stdout at ``fps`` for ``seconds`` (frames
    prepared beforehand, so the writer costs a copy and a pipe write per frame)."""
    import cv2

    try:
        import skimage.data

        base = cv2.resize(skimage.data.coffee()[:, :, ::-1], size, interpolation=cv2.INTER_AREA)
    except ImportError:
        base = np.full((size[1], size[0], 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    frames = [np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8).tobytes() for _ in range(8)]
    out, start, i = sys.stdout.buffer, time.perf_counter(), 0
    try:
        while (now := time.perf_counter()) < start + seconds:
            time.sleep(max(0.0, start + i / fps - now))
            out.write(frames[i % len(frames)])
            i += 1
        out.flush()
    except BrokenPipeError:  # the reader stopped first
        pass


def run(model: str, fps: float, seconds: float, threads: int | None) -> dict:
    """One live run at an offered rate; the summary as a dict."""
    import cv2

    from runtime import DepthHeatmapper
    from runtime.live import RawSink, open_source, run_live
    from runtime.steady import SteadyNormalizer

    hm, steady = DepthHeatmapper(model, threads=threads), SteadyNormalizer()
    for _ in range(3):
        hm.predict(np.zeros((SIZE[1], SIZE[0], 3), np.uint8))  # warm-up, outside the figures
    writer = subprocess.Popen([sys.executable, "-m", "benchmarks.live_bench", "--emit", str(fps), str(seconds)],
                              stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    sink_proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    sink = RawSink(sink_proc.stdin)

    def handle(frame) -> None:
        depth = hm.predict(frame.image).depth
        sink.write(steady.update(depth, frame.image).colorize(depth, cv2.COLORMAP_INFERNO))

    summary = run_live(open_source("-", f"{SIZE[0]}x{SIZE[1]}", stdin=writer.stdout), handle)
    writer.wait()
    sink_proc.stdin.close()
    sink_proc.wait()
    return {"offered_fps": fps, "frames_in": summary.frames_in, "processed": summary.processed,
            "dropped": summary.dropped, "fps": round(summary.fps, 1), "p50_ms": round(summary.p50_ms, 1),
            "p95_ms": round(summary.p95_ms, 1), "max_ms": round(summary.max_ms, 1), "stopped": summary.stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="models/midas_small.int8.onnx")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="30,120", help="offered frames per second, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--emit", nargs=2, type=float, metavar=("FPS", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emit:
        emit(*args.emit)
        return
    from runtime.cpu import cpu_name, int8_flags

    cpu = f"{cpu_name()} ({' '.join(int8_flags())})"
    print(f"{args.model}, raw bgr24 {SIZE[0]}x{SIZE[1]} on a pipe, {args.seconds:g} s per rate, "
          f"threads {args.threads or 'all'}; CPU {cpu}")
    print("| offered fps | frames in | processed | dropped | fps out | latency p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for fps in (float(r) for r in args.rates.split(",")):
        r = run(args.model, fps, args.seconds, args.threads)
        rows.append(r)
        print(f"| {fps:g} | {r['frames_in']} | {r['processed']} | {r['dropped']} | {r['fps']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['max_ms']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "cpu": cpu, "size": SIZE, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
