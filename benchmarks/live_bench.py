"""Live pipe throughput and latency: raw 640x480 bgr24 frames offered at a fixed rate on a
pipe (as ``ffmpeg -re ... -f rawvideo -`` or a camera would), through ``runtime.inputs.live``
(newest frame wins), inference, steady colours (``runtime.depth.steady``) and a raw bgr24 sink into
the next program in the pipe (``cat`` to /dev/null).

    python -m benchmarks.live_bench [models/midas_small.int8.onnx] [--seconds 10] [--rates 30,120]
    python -m benchmarks.live_bench MODEL --ws [--rates 30,120]    # through the server's /v1/stream

For each offered rate: frames in, processed, dropped, frames per second out, and latency
from a frame's arrival (read off the pipe) to its heatmap written (p50/p95/max). At 30 fps
(a camera's rate) nothing should be dropped; above the machine's rate frames are dropped and
the latency stays about one to two frames' work instead of growing. The frame writer is a
separate process on the same CPU, as a camera driver or ffmpeg would be.

``--ws``: the same two figures through the server on loopback. A ``serve`` process (uvicorn,
the service's default workers unless ``--workers``/``--threads``) takes 640x480 JPEG frames on
``/v1/stream`` from one WebSocket client here, which sends them at the offered rate whatever
comes back (as a camera page would without its own flow control; the server's one-frame slot
drops the rest); latency is from a frame's send to its heatmap JPEG received.
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
    from runtime.inputs.live import RawSink, open_source, run_live
    from runtime.depth.steady import SteadyNormalizer

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


def stream_app():
    """``uvicorn --factory benchmarks.live_bench:stream_app``: the service from the environment
    (serve.app.app_from_env), with /v1/stream whether or not create_app routes it already."""
    import serve.app
    from serve.stream import stream_router

    app = serve.app.app_from_env()
    if not hasattr(serve.app, "stream_router"):
        app.include_router(stream_router(app.state.service))
    return app


def jpeg_frames(size: tuple[int, int] = SIZE, count: int = 8) -> list[bytes]:
    """A noisy photo as 640x480 JPEGs (quality 90), encoded beforehand."""
    import cv2
    import skimage.data

    base = cv2.resize(skimage.data.coffee()[:, :, ::-1], size, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    return [cv2.imencode(".jpg", np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8),
                         [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for _ in range(count)]


def run_ws(url: str, fps: float, seconds: float) -> dict:
    """One WebSocket client offering JPEG frames at ``fps`` for ``seconds``."""
    import asyncio

    from websockets.asyncio.client import connect

    frames = jpeg_frames()

    async def go() -> dict:
        sent: dict[int, float] = {}  # the server's frame index (3 warm-up frames first) -> send time
        latencies, server_ms, last = [], [], {}
        async with connect(url, max_size=None, subprotocols=["midas-onnx"]) as ws:
            for _ in range(3):  # warm-up, outside the figures
                await ws.send(frames[0])
                await ws.recv()
                await ws.recv()

            async def receive() -> None:
                while True:
                    meta = json.loads(await ws.recv())
                    if "error" in meta:
                        continue
                    await ws.recv()
                    latencies.append((time.perf_counter() - sent[meta["frame"]]) * 1000)
                    server_ms.append(meta["latency_ms"])
                    last.update(meta)

            receiver = asyncio.ensure_future(receive())
            start, i = time.perf_counter(), 0
            while (now := time.perf_counter()) < start + seconds:
                await asyncio.sleep(max(0.0, start + i / fps - now))
                sent[i + 3] = time.perf_counter()
                await ws.send(frames[i % len(frames)])
                i += 1
            deadline = time.perf_counter() + 5  # the last frame in flight
            while (not last or last["frame"] < i + 2) and time.perf_counter() < deadline and len(latencies) < i:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
            if receiver.done():
                receiver.result()  # a failed receiver is an error, not a row of zeros
            receiver.cancel()
        lat = np.array(latencies or [np.nan])
        return {"offered_fps": fps, "frames_in": i, "processed": len(latencies), "dropped": i - len(latencies),
                "fps": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p95_ms": round(float(np.percentile(lat, 95)), 1), "max_ms": round(float(lat.max()), 1),
                "server_p50_ms": round(float(np.percentile(server_ms or [np.nan], 50)), 1)}

    return asyncio.run(go())


def serve_for_bench(model: str, workers: int | None, threads: int | None):
    """A uvicorn process serving the app on a free loopback port: (process, ws URL)."""
    import os
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MIDAS_ONNX_MODEL": str(model), "MIDAS_ONNX_QUIET": "1"}
    if workers:
        env["MIDAS_ONNX_WORKERS"] = str(workers)
    if threads:
        env["MIDAS_ONNX_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "benchmarks.live_bench:stream_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=Path(__file__).resolve().parent.parent, env=env)
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit("the server did not become ready")
        time.sleep(0.2)
    return proc, f"ws://127.0.0.1:{port}/v1/stream"


def main_ws(args, cpu: str) -> None:
    proc, url = serve_for_bench(args.model, args.workers, args.threads)
    try:
        print(f"{args.model}, 640x480 JPEG (q90) over a WebSocket on loopback ({url}), one client, "
              f"{args.seconds:g} s per rate, server workers {args.workers or 'default (CPUs)'}, "
              f"threads {args.threads or 'default'}; CPU {cpu}")
        print("| offered fps | frames sent | heatmaps | dropped | fps out | latency p50 ms | p95 ms | max ms "
              "| server p50 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = []
        for fps in (float(r) for r in args.rates.split(",")):
            r = run_ws(url, fps, args.seconds)
            rows.append(r)
            print(f"| {fps:g} | {r['frames_in']} | {r['processed']} | {r['dropped']} | {r['fps']} | {r['p50_ms']} | "
                  f"{r['p95_ms']} | {r['max_ms']} | {r['server_p50_ms']} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "cpu": cpu, "size": SIZE, "transport": "websocket",
                                         "workers": args.workers, "threads": args.threads, "rows": rows},
                                        indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="models/midas_small.int8.onnx")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="30,120", help="offered frames per second, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--ws", action="store_true", help="through the server's /v1/stream on loopback")
    parser.add_argument("--workers", type=int, default=None, help="--ws: the server's inference workers")
    parser.add_argument("--emit", nargs=2, type=float, metavar=("FPS", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emit:
        emit(*args.emit)
        return
    from runtime.model.cpu import cpu_name, int8_flags

    cpu = f"{cpu_name()} ({' '.join(int8_flags())})"
    if args.ws:
        main_ws(args, cpu)
        return
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
