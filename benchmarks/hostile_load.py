"""Honest clients' latency while hostile clients attack `midas-onnx serve` (issue 21).

    flock -x /tmp/midas-cpu.lock python -m benchmarks.hostile_load --model models/midas_small.int8.onnx

Starts its own server on 127.0.0.1 (``--max-pixels 20000000``), then, ``--rounds`` times
in turn, measures 4 honest `ab` clients sending a 640x480 JPEG: alone; as 7 honest clients
(4 + as many as the attackers sending real work: what sharing two cores with three more
clients costs without any hostility); and while 8 hostile clients run: 3 send a
99-megapixel PNG bomb in a loop, 3 send the most known_depths points a request may carry
(eight random sets made beforehand, on one kept-alive connection each), 2 send bodies at
2 KB/s until the body timeout cuts them off. Each attacker sends from a loopback address of
its own (127.0.0.10, .11, ...): to the server eight clients, none sharing the honest
clients' address or another attacker's refusal budget (serve.refusals). Prints every
round's honest p50/p95 and requests/s, the attacked/alone p95 ratio of each round and
their median, what the hostile requests were answered, the server's peak RSS, and the CPU
use (cores busy) of the server and of the attacking clients (this process): on a 2-core
machine the attackers' own client CPU competes with the server, which a real attack from
elsewhere would not (``--attackers-nice idle`` keeps it off: attackers on other machines).
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

HOSTILE_KINDS = ("bomb", "points", "slow", "plain")
IDLE = 20  # --attackers-nice idle: SCHED_IDLE


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
            nice: int = 0, address: str = "127.0.0.1") -> None:
    """One attacker looping until ``stop`` is set; counts what the server answered. ``nice``:
    this thread's scheduling niceness (19: it runs mostly on CPU time the server leaves idle;
    ``IDLE``: Linux's SCHED_IDLE, only on such time, as an attacker on another machine would). ``address``: the loopback address it sends from, so
    the server sees it as a client of its own."""
    if nice == IDLE:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    elif nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    if kind in ("points", "plain"):
        return points_attack(base, photo, stop, codes, lock, address, points=kind == "points")
    bomb = png_bomb() if kind == "bomb" else b""
    with httpx.Client(timeout=60, transport=httpx.HTTPTransport(local_address=address)) as http:
        while not stop.is_set():
            if kind == "bomb":
                code = http.post(base + "/v1/depth", content=bomb, headers={"content-type": "image/png"}).status_code
            else:
                code = slow_upload(base, stop, address)
            with lock:
                codes[f"{kind} {code}"] = codes.get(f"{kind} {code}", 0) + 1


def points_attack(base: str, photo: bytes, stop: threading.Event, codes: dict, lock: threading.Lock,
                  address: str, points: bool = True) -> None:
    """The most known_depths points a request may carry, on one kept-alive connection, with
    requests built beforehand and answers read by Content-Length: like `ab`, the attacker's
    own CPU stays small, as it would on another machine. ``points=False``: the same client
    asking for the plain heatmap (kind ``plain``, a control: the same load without points)."""
    from urllib.parse import quote

    rng = np.random.default_rng(int(address.rsplit(".", 1)[1]))
    host, port = base.removeprefix("http://").split(":")
    requests = [(f"POST /v1/depth{f'?format=json&known_depths={quote(json.dumps(pts))}' if points else ''} "
                 f"HTTP/1.1\r\nHost: {host}\r\n"
                 f"Content-Type: image/jpeg\r\nContent-Length: {len(photo)}\r\n\r\n").encode() + photo
                for pts in ([[int(x), int(y), round(float(d), 2)] for x, y, d in zip(
                    rng.integers(0, 640, 256), rng.integers(0, 480, 256), rng.uniform(1, 9, 256), strict=True)]
                    for _ in range(8))]
    sent = 0
    while not stop.is_set():
        with socket.create_connection((host, int(port)), source_address=(address, 0)) as sock:
            reader = sock.makefile("rb")
            while not stop.is_set():
                sock.sendall(requests[sent % len(requests)])
                sent += 1
                status = reader.readline()
                if not status:
                    break
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                with lock:
                    key = f"{'points' if points else 'plain'} {int(status.split()[1])}"
                    codes[key] = codes.get(key, 0) + 1


def slow_upload(base: str, stop: threading.Event, address: str = "127.0.0.1") -> int:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), source_address=(address, 0)) as sock:
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


class Attack:
    """The hostile clients as threads of this process, from 127.0.0.10, .11, ...: started on
    entry, stopped on exit; ``codes`` counts what the server answered them."""

    def __init__(self, kinds: list[str], base: str, photo: bytes, nice: int) -> None:
        self.codes: dict[str, int] = {}
        self._stop, lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=hostile, name=f"{k}{i}", daemon=True, args=(
            k, base, photo, self._stop, self.codes, lock, nice, f"127.0.0.{10 + i}")) for i, k in enumerate(kinds)]

    def __enter__(self) -> "Attack":
        for t in self._threads:
            t.start()
        time.sleep(2)  # let the attack get going
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def honest(pid: int, base: str, photo: bytes, count: int, clients: int = 4) -> dict:
    """`ab` clients' figures, with the server's and this process's (the attackers') CPU use."""
    c0, a0, t0 = cpu_s(pid), time.process_time(), time.time()
    out = ab(base, photo, clients, count)
    seconds = time.time() - t0
    out["server_cpu_per_s"] = round((cpu_s(pid) - c0) / seconds, 2)
    out["attackers_cpu_per_s"] = round((time.process_time() - a0) / seconds, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "midas_small.int8.onnx")
    parser.add_argument("--requests", type=int, default=600, help="honest requests per run")
    parser.add_argument("--rounds", type=int, default=3, help="alone/attacked pairs, interleaved")
    parser.add_argument("--body-timeout", default="5")
    parser.add_argument("--attack", default="bomb:3,points:3,slow:2",
                        help="hostile clients by kind (bomb, points, slow; plain: the points clients' "
                             "requests without points, a control), e.g. bomb:6,slow:2")
    parser.add_argument("--attackers-nice", default="0", choices=[*map(str, range(20)), "idle"], metavar="0-19|idle",
                        help="the attackers' niceness; idle (SCHED_IDLE: they run only when the server and the "
                             "honest clients leave a core free) models attackers on other machines")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `midas-onnx serve` argument (repeatable), e.g. --server-arg=--refusal-rate=0")
    args = parser.parse_args()
    args.attackers_nice = IDLE if args.attackers_nice == "idle" else int(args.attackers_nice)
    import skimage.data

    from runtime.model.cpu import cpu_name, int8_flags

    photo = cv2.imencode(".jpg", cv2.resize(skimage.data.astronaut()[:, :, ::-1], (640, 480)))[1].tobytes()
    kinds = [k for part in args.attack.split(",") for k in [part.split(":")[0]] * int(part.split(":")[1])]
    proc, base = start(args.model, "--max-pixels", "20000000", "--body-timeout", args.body_timeout, "--quiet",
                        *args.server_arg)
    rounds, codes = [], {}
    try:
        ab(base, photo, 4, 40)  # warm-up
        for _ in range(args.rounds):
            alone = honest(proc.pid, base, photo, args.requests)
            # the same count of clients all honest: what sharing the cores alone costs
            busy = honest(proc.pid, base, photo, args.requests, clients=4 + kinds.count("points") + kinds.count("plain"))
            with Attack(kinds, base, photo, args.attackers_nice) as attack:
                attacked = honest(proc.pid, base, photo, args.requests)
            for key, n in attack.codes.items():
                codes[key] = codes.get(key, 0) + n
            rounds.append({"alone": alone, f"honest_{busy['clients']}": busy, "attacked": attacked,
                           "p95_ratio": round(attacked["p95_ms"] / max(1, alone["p95_ms"]), 2)})
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    ratios = sorted(r["p95_ratio"] for r in rounds)
    report = {"cpu": cpu_name(), "cpu_flags": int8_flags(),
              "attackers_nice": "idle" if args.attackers_nice == IDLE else args.attackers_nice,
              "server_args": args.server_arg, "honest_clients": 4,
              "hostile_clients": {k: kinds.count(k) for k in HOSTILE_KINDS}, "rounds": rounds,
              "p95_ratio_median": ratios[len(ratios) // 2], "p95_ratios": ratios, "hostile_answers": codes,
              "server_peak_rss_mb": round(peak, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
