"""Peak memory of a dynamic-size model over many images of varied sizes, arena on vs off.

    python -m benchmarks.memory models/midas_small.onnx --images 300     # the default export: dynamic size

Each setting runs in a fresh process (VmHWM/VmRSS from /proc/self/status), so one cannot
inflate the other. onnxruntime's CPU arena keeps buffers per new shape; with dynamic models
it is the difference between bounded and growing memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys
import numpy as np
from runtime import DepthHeatmapper

def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024

hm = DepthHeatmapper(sys.argv[1], memory_arena=sys.argv[2] == "on")
rng = np.random.default_rng(0)
samples = []
for i in range(int(sys.argv[3])):
    h, w = int(rng.integers(120, 1200)), int(rng.integers(120, 1200))
    hm.predict((rng.random((h, w, 3)) * 255).astype(np.uint8))
    if i % 25 == 24:
        samples.append({"images": i + 1, "rss_mb": round(status("VmRSS"), 1)})
print(json.dumps({"arena": sys.argv[2], "peak_rss_mb": round(status("VmHWM"), 1), "samples": samples}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    for arena in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.model), arena, str(args.images)],
                             capture_output=True, text=True, check=True, cwd=repo)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        trail = ", ".join(f"{s['images']}: {s['rss_mb']:.0f}" for s in result["samples"][::2])
        print(f"arena {arena:>3}: peak RSS {result['peak_rss_mb']:.0f} MB; RSS after N images: {trail}")


if __name__ == "__main__":
    main()
