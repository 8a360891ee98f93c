"""Ray's overhead on one machine: `midas-onnx bulk` vs `midas-onnx heatmap` on the same photos.

    python -m benchmarks.bulk_bench --model models/midas_small.int8.onnx --count 500

Both commands run as a user runs them (fresh processes, start-up included), same model, same
500 photos at 640x480 made from scikit-image samples.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.photos import write

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "midas_small.int8.onnx"))
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="midas-bulk-bench-") as tmp:
        photos = Path(tmp) / "photos"
        write(photos, (640, 480), args.count)
        exe = [sys.executable, "-m", "midas_onnx"]
        single_s, single_line = timed([*exe, "heatmap", str(photos), "-o", f"{tmp}/single", "--model", args.model])
        bulk_s, bulk_line = timed([*exe, "bulk", str(photos), f"{tmp}/bulk", "--model", args.model])
    result = {
        "photos": args.count, "size": "640x480", "model": args.model,
        "heatmap_cli": {"seconds": round(single_s, 1), "images_per_s": round(args.count / single_s, 2), "said": single_line},
        "bulk_local_ray": {"seconds": round(bulk_s, 1), "images_per_s": round(args.count / bulk_s, 2), "said": bulk_line},
        "ray_overhead_pct": round(100 * (bulk_s / single_s - 1), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
