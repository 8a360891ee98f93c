"""Load test of `midas-onnx serve` on loopback.

    python -m benchmarks.load --model models/midas_small.int8.onnx            # everything
    python -m benchmarks.load --only ratio                                    # server vs CLI only

``ratio``: the server's images/s at 16 concurrent `ab` clients (a C client, so the client
costs little CPU) sending the same 640x480 JPEG, against the `heatmap` CLI's images/s on
copies of that photo, in the same run, with the CPU and its flags. ``levels``: throughput and
p50/p95 latency at 1, 4 and 16 concurrent clients (async Python client); ``--ray``: 2 Ray Serve
replicas against the one process, in images/s and in CPU milliseconds per request spent by
the serving processes (``replica_cpu_vs_one_process``: what the replica wrapper adds; CPU time
moves far less than throughput when something else shares the machine); ``soak``: server RSS
over a long run; ``overload``: 503 + Retry-After share against a small queue. Every loop is
bounded in count and time, and only 127.0.0.1 is ever addressed. Run it under
`flock -x /tmp/midas-cpu.lock` so nothing else shares the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: what a request costs it, a figure that
    load from other processes changes far less than wall time or throughput."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ms_per_request(pids, run) -> tuple[dict, float]:
    """(``run()``'s result, the CPU milliseconds ``pids`` spent on each of its requests)."""
    before = sum(cpu_seconds(p) for p in pids)
    result = run()
    return result, round((sum(cpu_seconds(p) for p in pids) - before) * 1000 / max(1, result["requests"]), 2)


def start(model: Path, *args: str, ready_s: float = 60) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "serve", "--model", str(model), "--port", str(port), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + ready_s
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


def cli_images_per_s(model: Path, payload: bytes, count: int) -> float:
    """The `heatmap` CLI on ``count`` copies of the photo (its own default workers/threads),
    as it reports images/s (work only, model load excluded)."""
    with tempfile.TemporaryDirectory(prefix="midas-load-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in range(count):
            (src / f"p{i:04d}.jpg").write_bytes(payload)
        out = subprocess.run([sys.executable, "-m", "midas_onnx", "heatmap", str(src), "-o", str(Path(tmp) / "out"),
                              "--model", str(model)], cwd=REPO, capture_output=True, text=True, check=True)
    found = re.search(r"\(([\d.]+) images/s\)", out.stdout + out.stderr)
    if not found:
        raise SystemExit(f"no images/s in the CLI's output:\n{out.stdout}{out.stderr}")
    return float(found.group(1))


def ab(base: str, payload: bytes, clients: int, count: int) -> dict:
    """`ab -c clients -n count` POSTing the photo; requests/s, p50/p95 ms, non-2xx count."""
    if shutil.which("ab") is None:
        raise SystemExit("ab not found: apt-get install -y apache2-utils")
    with tempfile.NamedTemporaryFile(suffix=".jpg") as body:
        body.write(payload)
        body.flush()
        out = subprocess.run(["ab", "-q", "-c", str(clients), "-n", str(count), "-p", body.name, "-T", "image/jpeg",
                              base + "/v1/depth"], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M))
    bad = re.search(r"Non-2xx responses:\s+(\d+)", out)
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    return {"clients": clients, "requests": count, "per_s": rate, "p50_ms": int(pct.get("50", -1)),
            "p95_ms": int(pct.get("95", -1)), "non_2xx": int(bad.group(1)) if bad else 0, "failed": failed}


def ratio(model: Path, payload: bytes, count: int, server_args: list[str]) -> dict:
    """Server images/s at 16 `ab` clients over the CLI's images/s on the same photo."""
    from runtime.model.cpu import cpu_name, int8_flags

    proc, base = start(model, *server_args)
    try:
        ab(base, payload, 16, 64)  # warm-up: threads, arenas, first-shape allocations
        server = ab(base, payload, 16, count)
    finally:
        proc.terminate()
        proc.wait()
    cli = cli_images_per_s(model, payload, count)
    return {"cpu": cpu_name(), "cpu_flags": int8_flags(), "server_args": server_args, "server_ab_16": server,
            "cli_images_per_s": cli, "ratio": round(server["per_s"] / cli, 3)}


def ray_vs_one(model: Path, payload: bytes, count: int, replicas: int = 2, ray_args: tuple[str, ...] = ()) -> dict:
    """``--ray``: `serve --ray` with ``replicas`` single-threaded replicas against the
    single-process server (default flags), both at 16 `ab` clients, in the same run; start-up
    time (launch to /readyz 200 from every replica) and RSS per replica. ``ray_args``
    (``--server-arg``) go to the Ray server only, e.g. ``--max-batch 1`` to measure its
    replicas without our batching."""
    from runtime.model.cpu import cpu_name, int8_flags

    out: dict = {"cpu": cpu_name(), "cpu_flags": int8_flags()}
    t0 = time.monotonic()
    proc, base = start(model)
    out["one_process"] = {"ready_s": round(time.monotonic() - t0, 1)}
    try:
        ab(base, payload, 16, 64)
        one, cpu_ms = cpu_ms_per_request([proc.pid], lambda: ab(base, payload, 16, count))
        out["one_process"] |= {"ab_16": one, "cpu_ms_per_request": cpu_ms, "rss_mb": round(rss_mb(proc.pid), 1)}
    finally:
        proc.terminate()
        proc.wait()
    t0 = time.monotonic()
    proc, base = start(model, "--ray", "--replicas", str(replicas), *ray_args, ready_s=300)
    try:
        pids: set[int] = set()
        while len(pids) < replicas and time.monotonic() - t0 < 300:
            r = httpx.get(base + "/readyz", timeout=5)
            if r.status_code == 200:
                pids.add(int(r.headers["x-midas-replica"]))
        ray_out = {"replicas": replicas, "args": list(ray_args), "ready_s": round(time.monotonic() - t0, 1)}
        ab(base, payload, 16, 64)
        ray_out["ab_16"], ray_out["replica_cpu_ms_per_request"] = cpu_ms_per_request(
            sorted(pids), lambda: ab(base, payload, 16, count))
        ray_out["rss_mb_per_replica"] = [round(rss_mb(p), 1) for p in sorted(pids)]
        out["ray"] = ray_out
    finally:
        proc.send_signal(2)
        proc.wait(timeout=120)
    out["ratio"] = round(out["ray"]["ab_16"]["per_s"] / out["one_process"]["ab_16"]["per_s"], 3)
    # what a request costs the replicas over the one process (the wrapper's share; HAProxy and
    # Ray's own processes not counted): a ratio a loaded machine moves far less than throughput
    out["replica_cpu_vs_one_process"] = round(out["ray"]["replica_cpu_ms_per_request"]
                                              / out["one_process"]["cpu_ms_per_request"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "midas_small.int8.onnx")
    parser.add_argument("--only", choices=["ratio", "levels"], default=None)
    parser.add_argument("--ray", action="store_true", help="only: 2 Ray Serve replicas vs the single process")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--ratio-requests", type=int, default=400, help="images for the server/CLI ratio")
    parser.add_argument("--soak", type=int, default=2000, help="requests in the memory run")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)")
    args = parser.parse_args()
    import skimage.data

    payload = cv2.imencode(".jpg", cv2.resize(skimage.data.astronaut()[:, :, ::-1], (640, 480)))[1].tobytes()
    report: dict = {"model": str(args.model), "photo": "640x480 JPEG"}
    if args.ray:
        report["ray"] = ray_vs_one(args.model, payload, args.ratio_requests, ray_args=tuple(args.server_arg))
        print(json.dumps(report, indent=2))
        return
    if args.only in (None, "ratio"):
        report["ratio"] = ratio(args.model, payload, args.ratio_requests, args.server_arg)
    if args.only in (None, "levels"):
        levels(args, payload, report)
    print(json.dumps(report, indent=2))


def levels(args, payload: bytes, report: dict) -> None:
    proc, base = start(args.model, *args.server_arg)
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
    proc, base = start(args.model, "--queue-size", "4", "--max-batch", "2", *args.server_arg)
    try:
        report["overload"] = asyncio.run(drive(base, payload, 32, 200))
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
