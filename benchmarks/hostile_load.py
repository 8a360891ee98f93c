"""Honest clients' latency while hostile clients attack `midas-onnx serve` (issue 21).

    flock -x /tmp/midas-cpu.lock python -m benchmarks.hostile_load --model models/midas_small.int8.onnx

Starts its own server on 127.0.0.1 (``--max-pixels 20000000``), then measures 4 honest
`ab` clients sending a 640x480 JPEG: first alone, then while 8 hostile clients run for the
same time: 3 send a 99-megapixel PNG bomb in a loop, 3 send the most known_depths points a
request may carry (random, so RANSAC works hardest), 2 send bodies at 2 KB/s until the
body timeout cuts them off. Prints honest p50/p95 and requests/s in both runs, their ratio,
what the hostile requests were answered, the server's peak RSS, and CPU use (cores busy) of
the server and of the attacking clients (this process): on a 2-core machine the attackers'
own client CPU competes with the server, which a real attack from elsewhere would not.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from .load import REPO, ab, start

HOSTILE_KINDS = ("bomb", "points", "slow")


def png_bomb(width: int = 9000, height: int = 11000) -> bytes:
    """A 16-bit PNG of zeros declaring width x height: ~0.2 MB that decodes to ~200 MB."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + 2 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hostile(kind: str, base: str, photo: bytes, stop: threading.Event, codes: dict, lock: threading.Lock,
            nice: int = 0) -> None:
    """One attacker looping until ``stop`` is set; counts what the server answered. ``nice``:
    this thread's scheduling niceness (19: it runs on CPU time the server leaves idle, as an
    attacker on another machine would)."""
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    bomb = png_bomb() if kind == "bomb" else b""
    rng = np.random.default_rng(abs(hash(threading.current_thread().name)) % 2**32)
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            if kind == "bomb":
                code = http.post(base + "/v1/depth", content=bomb, headers={"content-type": "image/png"}).status_code
            elif kind == "points":
                pts = [[int(x), int(y), round(float(d), 2)] for x, y, d in
                       zip(rng.integers(0, 640, 256), rng.integers(0, 480, 256), rng.uniform(1, 9, 256), strict=True)]
                code = http.post(base + "/v1/depth", params={"format": "json", "known_depths": json.dumps(pts)},
                                 content=photo, headers={"content-type": "image/jpeg"}).status_code
            else:
                code = slow_upload(base, stop)
            with lock:
                codes[f"{kind} {code}"] = codes.get(f"{kind} {code}", 0) + 1


def slow_upload(base: str, stop: threading.Event) -> int:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/depth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 10000000\r\n\r\n")
        sock.settimeout(0.5)
        while not stop.is_set():
            try:
                answer = sock.recv(4096)
                return int(answer.split(b" ", 2)[1]) if answer else 0
            except socket.timeout:
                pass
            except OSError:
                return 0
            try:
                sock.sendall(b"\x00" * 1024)
            except OSError:
                return 0
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "midas_small.int8.onnx")
    parser.add_argument("--requests", type=int, default=300, help="honest requests per run")
    parser.add_argument("--body-timeout", default="5")
    parser.add_argument("--attack", default="bomb:3,points:3,slow:2",
                        help="hostile clients by kind (bomb, points, slow), e.g. bomb:6,slow:2")
    parser.add_argument("--attackers-nice", type=int, default=0, choices=range(20), metavar="0-19",
                        help="the attackers' niceness: 19 models attackers on other machines (their own CPU "
                             "time not taken from the server's cores)")
    args = parser.parse_args()
    import skimage.data

    from runtime.cpu import cpu_name, int8_flags

    photo = cv2.imencode(".jpg", cv2.resize(skimage.data.astronaut()[:, :, ::-1], (640, 480)))[1].tobytes()
    proc, base = start(args.model, "--max-pixels", "20000000", "--body-timeout", args.body_timeout, "--quiet")
    try:
        ab(base, photo, 4, 40)  # warm-up
        c0, t0 = cpu_s(proc.pid), time.time()
        alone = ab(base, photo, 4, args.requests)
        alone["server_cpu_per_s"] = round((cpu_s(proc.pid) - c0) / (time.time() - t0), 2)
        rss_alone = peak_rss_mb(proc.pid)
        codes: dict[str, int] = {}
        lock = threading.Lock()
        stop = threading.Event()
        kinds = [k for part in args.attack.split(",") for k in [part.split(":")[0]] * int(part.split(":")[1])]
        threads = [threading.Thread(target=hostile, args=(k, base, photo, stop, codes, lock, args.attackers_nice), name=f"{k}{i}",
                                    daemon=True) for i, k in enumerate(kinds)]
        for t in threads:
            t.start()
        time.sleep(2)  # let the attack get going
        c0, a0, t0 = cpu_s(proc.pid), time.process_time(), time.time()
        attacked = ab(base, photo, 4, args.requests)
        seconds = time.time() - t0
        attacked["server_cpu_per_s"] = round((cpu_s(proc.pid) - c0) / seconds, 2)
        attacked["attackers_cpu_per_s"] = round((time.process_time() - a0) / seconds, 2)  # this process: the attackers
        stop.set()
        for t in threads:
            t.join(timeout=30)
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    report = {"cpu": cpu_name(), "cpu_flags": int8_flags(), "attackers_nice": args.attackers_nice,
              "honest_clients": 4, "hostile_clients": dict(
        (k, kinds.count(k)) for k in HOSTILE_KINDS), "alone": alone, "attacked": attacked,
        "p95_ratio": round(attacked["p95_ms"] / max(1, alone["p95_ms"]), 2),
        "hostile_answers": codes, "server_peak_rss_mb": {"alone": round(rss_alone, 1), "attacked": round(peak, 1)}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
