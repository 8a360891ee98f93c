"""Load test of `midas-onnx serve` on loopback with a bounded async client.

    python -m benchmarks.load --model models/midas_small.int8.onnx

Starts its own server on 127.0.0.1, then: throughput and p50/p95 latency at 1, 4 and 16
concurrent clients; an overload burst against a small queue (503 + Retry-After share);
server RSS over a long run (--soak requests) to show memory does not grow. Every loop is
bounded in count and time, and only 127.0.0.1 is ever addressed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(model: Path, *args: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "serve", "--model", str(model), "--port", str(port), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become ready")


async def drive(base: str, payload: bytes, clients: int, total: int, timeout_s: float = 300) -> dict:
    """``clients`` concurrent loops sending ``total`` requests in all; bounded by count and time."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    counter = iter(range(total))
    stop = time.perf_counter() + timeout_s

    async def client(http: httpx.AsyncClient) -> None:
        for _ in counter:
            if time.perf_counter() > stop:
                return
            t = time.perf_counter()
            r = await http.post(base + "/v1/depth", content=payload, headers={"content-type": "image/jpeg"})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "requests": sum(codes.values()), "codes": codes, "seconds": round(elapsed, 2),
            "ok_per_s": round(len(latencies) / elapsed, 2), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "midas_small.int8.onnx")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--soak", type=int, default=2000, help="requests in the memory run")
    args = parser.parse_args()
    import skimage.data

    payload = cv2.imencode(".jpg", cv2.resize(skimage.data.astronaut()[:, :, ::-1], (640, 480)))[1].tobytes()
    report: dict = {"model": str(args.model), "photo": "640x480 JPEG"}
    proc, base = start(args.model)
    try:
        report["levels"] = [asyncio.run(drive(base, payload, c, args.requests)) for c in (1, 4, 16)]
        before = rss_mb(proc.pid)
        samples = []
        for i in range(0, args.soak, 250):
            asyncio.run(drive(base, payload, 8, min(250, args.soak - i)))
            samples.append(round(rss_mb(proc.pid), 1))
        report["soak"] = {"requests": args.soak, "rss_mb_before": round(before, 1), "rss_mb_every_250": samples}
    finally:
        proc.terminate()
        proc.wait()
    proc, base = start(args.model, "--queue-size", "4", "--max-batch", "2")
    try:
        report["overload"] = asyncio.run(drive(base, payload, 32, 200))
    finally:
        proc.terminate()
        proc.wait()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
