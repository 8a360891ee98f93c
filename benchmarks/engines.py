"""onnxruntime and OpenVINO on the same files, what ``auto`` picks, and ``heatmap`` on each.

    python -m benchmarks.engines models/midas_small.onnx models/midas_small.int8.onnx
    python -m benchmarks.engines models/da_v2_small.onnx --shapes 364x490,518x686 --photos 24

For each file, in one process run:

- latency (median of ``--rounds`` interleaved rounds, 2 threads) of both engines at each
  shape (default: the file's typical photo shape and 256x256 for MiDaS small);
- what ``engine="auto"`` chooses, measured afresh (an empty engine cache), and its latency:
  the bar is "never slower than onnxruntime alone" (within 2%, the run-to-run noise of one
  median here) and within the choice margin of the faster engine;
- ``heatmap`` images/s on 640x480 JPEGs with ``--engine`` each, against that engine's
  inference-only rate the same way ``heatmap`` runs it (2 workers, 1 thread each, one
  shared session): the bar is 0.85.

Prints the CPU and its flags first; writes ``--json`` (default
``benchmarks/results/engines-<cpu>.json``). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from runtime.model.cpu import cpu_name, int8_flags
from runtime.model.engine_choice import measure, open_session, typical_shape
from runtime.model.metadata import INPUT_NAME

BARS = {"auto_vs_onnxruntime_max": 1.02, "auto_vs_fastest_max": 1.05, "heatmap_vs_inference_min": 0.85}
ENGINES = ("onnxruntime", "openvino")


def latencies(path: str, shapes: list[tuple[int, int]], rounds: int) -> dict[str, dict[str, float]]:
    """shape -> engine -> median ms, engines alternating within every round (``auto``'s own
    measurement, with more rounds)."""
    sessions = {e: open_session(path, 2, e)[0] for e in ENGINES}
    return {f"{hw[0]}x{hw[1]}": measure(sessions, hw, rounds) for hw in shapes}


def auto_choice(path: str) -> dict:
    """What ``auto`` picks with nothing cached (a fresh cache folder), and its own timings."""
    old = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        try:
            _, choice = open_session(path, 2, "auto")
        finally:
            if old is None:
                os.environ.pop("XDG_CACHE_HOME")
            else:
                os.environ["XDG_CACHE_HOME"] = old
    return choice.to_dict()


def inference_rate(path: str, engine: str, hw: tuple[int, int], seconds: float = 6.0) -> float:
    """Inferences/s of 2 threads on one shared 1-thread session, as ``heatmap``'s 2 workers."""
    session = open_session(path, 1, engine)[0]
    x = np.random.default_rng(1).standard_normal((1, 3, *hw)).astype(np.float32)
    session.run(None, {INPUT_NAME: x})
    counts = [0, 0]
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            session.run(None, {INPUT_NAME: x})
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def heatmap_rate(path: str, engine: str, photos: Path, out: Path) -> float:
    """``midas-onnx heatmap`` images/s (its own summary line: the job, not the start-up)."""
    r = subprocess.run([sys.executable, "-m", "midas_onnx", "heatmap", str(photos), "-o", str(out), "--model", path,
                        "--engine", engine, "--force"], capture_output=True, text=True, check=True)
    found = re.search(r"\(([\d.]+) images/s\)", r.stdout + r.stderr)
    if not found:
        raise SystemExit(f"no images/s in heatmap's output:\n{r.stdout}{r.stderr}")
    return float(found.group(1))


def one_file(path: str, shapes: list[tuple[int, int]] | None, rounds: int, photos: Path, work: Path) -> dict:
    session = open_session(path, 2, "onnxruntime")[0]
    typical = typical_shape(session)
    shapes = shapes or [typical, (256, 256)]
    row = {"file": Path(path).name, "typical_shape": f"{typical[0]}x{typical[1]}",
           "latency_ms": latencies(path, shapes, rounds), "auto": auto_choice(path)}
    chosen = row["auto"]["engine"]
    row["auto_latency_ms"] = {shape: t[chosen] for shape, t in row["latency_ms"].items()}
    row["heatmap"] = {}
    for engine in ENGINES:
        infer = inference_rate(path, engine, typical)
        cli = heatmap_rate(path, engine, photos, work / engine)
        row["heatmap"][engine] = {"inference_per_s": infer, "heatmap_images_per_s": cli, "ratio": cli / infer}
    return row


def bars(row: dict) -> dict[str, bool]:
    ok = {}
    for shape, t in row["latency_ms"].items():
        auto = row["auto_latency_ms"][shape]
        ok[f"{shape} auto <= onnxruntime"] = auto <= BARS["auto_vs_onnxruntime_max"] * t["onnxruntime"]
        ok[f"{shape} auto <= fastest"] = auto <= BARS["auto_vs_fastest_max"] * min(t.values())
    for engine, h in row["heatmap"].items():
        ok[f"heatmap/inference {engine}"] = h["ratio"] >= BARS["heatmap_vs_inference_min"]
    return ok


def print_row(row: dict) -> None:
    print(f"\n{row['file']} (typical shape {row['typical_shape']}; auto chose {row['auto']['engine']}: "
          f"{row['auto']['timings_ms']})")
    print("| shape | onnxruntime ms | OpenVINO ms | auto ms |\n|---|---|---|---|")
    for shape, t in row["latency_ms"].items():
        print(f"| {shape} | {t['onnxruntime']:.1f} | {t['openvino']:.1f} | {row['auto_latency_ms'][shape]:.1f} |")
    print("| engine | inference/s (2x1 thread) | heatmap images/s | ratio |\n|---|---|---|---|")
    for engine, h in row["heatmap"].items():
        print(f"| {engine} | {h['inference_per_s']:.1f} | {h['heatmap_images_per_s']:.1f} | {h['ratio']:.2f} |")
    for name, good in bars(row).items():
        print(f"  {'PASS' if good else 'FAIL'} {name}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--shapes", help="HxW,HxW (default: the file's typical photo shape and 256x256)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--photos", type=int, default=60, help="640x480 JPEGs for the heatmap runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from benchmarks.photos import write

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else None
    cpu = {"name": cpu_name(), "flags": int8_flags(), "cores": os.cpu_count()}
    print(f"CPU: {cpu['name']}, {cpu['cores']} logical cores, flags {' '.join(cpu['flags'])}")
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        write(photos, (640, 480), args.photos)
        rows = []
        for path in args.models:
            rows.append(one_file(path, shapes, args.rounds, photos, Path(tmp) / Path(path).stem))
            print_row(rows[-1])
    result = {"cpu": cpu, "bars": BARS, "files": rows, "all_bars_pass": all(all(bars(r).values()) for r in rows)}
    slug = re.sub(r"[^a-z0-9]+", "-", cpu["name"].lower()).strip("-")
    out = args.json or Path(__file__).resolve().parent / "results" / f"engines-{slug}-{os.cpu_count()}c.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
