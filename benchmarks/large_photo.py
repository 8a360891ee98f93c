"""Peak memory of one large photo through ``DepthHeatmapper.predict``, against its bound.

    python -m benchmarks.large_photo models/midas_small.int8.onnx --megapixels 40
    python -m benchmarks.large_photo models/midas_small.int8.onnx --output file

The bound: the decoded uint8 image (3 bytes a pixel), the full-size outputs (float32 depth,
4 bytes; BGR heatmap, 3 bytes) and a small constant. ``--output file`` measures what
``midas-onnx heatmap`` holds instead: the heatmap PNG's bytes (``runtime.outputs.render.render``,
written from the levels block by block: at most 1 byte a pixel) in place of the BGR heatmap. Runs in a fresh process: the model is
loaded and warmed up on a small image, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), then the photo goes through ``predict`` from its file, and the
peak (VmHWM) above the warm baseline is reported. ``tests/test_runtime.py`` runs the same
measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BYTES_PER_PIXEL = 3 + 4 + 3  # decoded uint8 BGR + float32 depth + uint8 BGR heatmap
FILE_BYTES_PER_PIXEL = 3 + 4 + 1  # decoded uint8 BGR + float32 depth + the heatmap PNG's bytes
CONSTANT_MB = 64  # network-size buffers, onnxruntime's activations, block scratch

CHILD = """
import json, sys, time
import numpy as np
from runtime import DepthHeatmapper
from runtime.outputs.render import render

def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024

hm = DepthHeatmapper(sys.argv[1], threads=int(sys.argv[3]))
hm.predict(np.zeros((480, 640, 3), np.uint8))  # session warm: its buffers are not the photo's
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset VmHWM to the current RSS
t = time.perf_counter()
result = hm.predict(sys.argv[2])
if sys.argv[4] == "file":
    data = render(result, "heatmap")  # the heatmap file as `midas-onnx heatmap` writes it
else:
    result.heatmap  # made on first use: part of the bound
seconds = time.perf_counter() - t
peak = status("VmHWM")
print(json.dumps({"shape": list(result.depth.shape), "baseline_bytes": base, "peak_bytes": peak,
                  "peak_above_baseline_bytes": peak - base, "seconds": seconds}))
"""


def write_photo(path: Path, megapixels: float) -> tuple[int, int]:
    """A smooth, photo-like JPEG of about ``megapixels`` (3:2), from a scikit-image sample."""
    import cv2
    import numpy as np

    width = int((megapixels * 1e6 * 1.5) ** 0.5) // 2 * 2
    height = int(width / 1.5)
    try:
        import skimage.data

        seed = skimage.data.coffee()[:, :, ::-1]
    except ImportError:
        seed = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
    image = cv2.resize(seed, (width, height), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return height, width


def measure(model: str | Path, photo: str | Path, threads: int = 1, output: str = "heatmap") -> dict:
    """Run the child in a fresh interpreter beside this repository. ``output``: "heatmap"
    (the BGR array, ``DepthResult.heatmap``) or "file" (the heatmap PNG's bytes)."""
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(photo), str(threads), output],
                         cwd=repo, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    h, w = result["shape"]
    per_pixel = FILE_BYTES_PER_PIXEL if output == "file" else BYTES_PER_PIXEL
    result["bound_bytes"] = h * w * per_pixel + CONSTANT_MB * 2**20
    return result


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--megapixels", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", choices=("heatmap", "file"), default="heatmap",
                        help="hold the BGR heatmap array, or the heatmap PNG as the CLI writes it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "large.jpg"
        h, w = write_photo(photo, args.megapixels)
        r = measure(args.model, photo, args.threads, args.output)
    mb = 2**20
    held = h * w * (1 if args.output == "file" else 3) / mb
    print(f"{w}x{h} ({h * w / 1e6:.1f} MP) through predict in {r['seconds']:.2f} s: peak "
          f"{r['peak_above_baseline_bytes'] / mb:.0f} MB above the warm baseline; bound "
          f"{r['bound_bytes'] / mb:.0f} MB (decoded {h * w * 3 / mb:.0f} + depth {h * w * 4 / mb:.0f} "
          f"+ heatmap {'PNG' if args.output == 'file' else 'BGR'} {held:.0f} + {CONSTANT_MB})")


if __name__ == "__main__":
    main()
