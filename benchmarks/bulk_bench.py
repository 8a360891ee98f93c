"""Ray's cost on one machine: `midas-onnx bulk` against `midas-onnx heatmap` on the same photos.

    python -m benchmarks.bulk_bench --model models/midas_small.int8.onnx --count 600 --runs 2

Both commands run as a user runs them (fresh processes, start-up included), same model, same
photos at 640x480 made from scikit-image samples. Per run: a one-photo job of each (start-up:
command to exit), then the whole set. Steady-state throughput takes the one-photo time out:
``(count - 1) / (T_count - T_1)``. Targets (issue 14): bulk start-up <= 5 s, steady-state >=
0.9 of heatmap's, whole-set wall time <= 1.25x heatmap's, in every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.photos import write

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"bulk_startup_s_max": 5.0, "steady_ratio_min": 0.9, "wall_ratio_max": 1.25}


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def one_run(exe: list[str], model: str, photos: Path, single: Path, tmp: Path, count: int) -> dict:
    times = {}
    for name, sub in (("heatmap", ["heatmap"]), ("bulk", ["bulk"])):
        for label, src in (("one", single), ("all", photos)):
            out = tmp / f"{name}-{label}"
            shutil.rmtree(out, ignore_errors=True)
            args = [str(src), "-o", str(out)] if name == "heatmap" else [str(src), str(out)]
            times[f"{name}_{label}_s"] = timed([*exe, *sub, *args, "--model", model])
    steady = {n: (count - 1) / (times[f"{n}_all_s"] - times[f"{n}_one_s"]) for n in ("heatmap", "bulk")}
    return {**{k: round(v, 2) for k, v in times.items()},
            "heatmap_steady_images_per_s": round(steady["heatmap"], 1),
            "bulk_steady_images_per_s": round(steady["bulk"], 1),
            "steady_ratio": round(steady["bulk"] / steady["heatmap"], 3),
            "wall_ratio": round(times["bulk_all_s"] / times["heatmap_all_s"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "midas_small.int8.onnx"))
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    from runtime.cpu import cpu_name, int8_flags

    with tempfile.TemporaryDirectory(prefix="midas-bulk-bench-") as tmp:
        tmp = Path(tmp)
        photos, single = tmp / "photos", tmp / "single"
        paths = write(photos, (640, 480), args.count)
        single.mkdir()
        shutil.copy(paths[0], single / paths[0].name)
        exe = [sys.executable, "-m", "midas_onnx"]
        runs = [one_run(exe, args.model, photos, single, tmp, args.count) for _ in range(args.runs)]
    met = {
        "bulk_startup": all(r["bulk_one_s"] <= TARGETS["bulk_startup_s_max"] for r in runs),
        "steady_ratio": all(r["steady_ratio"] >= TARGETS["steady_ratio_min"] for r in runs),
        "wall_ratio": all(r["wall_ratio"] <= TARGETS["wall_ratio_max"] for r in runs),
    }
    print(json.dumps({"cpu": cpu_name(), "flags": int8_flags(), "photos": args.count, "size": "640x480",
                      "model": args.model, "targets": TARGETS, "runs": runs, "met_in_every_run": met}, indent=2))


if __name__ == "__main__":
    main()
