"""What ``--input-size`` trades: latency against the change in the output, for a dynamic model.

    python -m benchmarks.input_size models/da_v2_small.onnx                       # 518, 364, 252
    python -m benchmarks.input_size models/da_v2_small.onnx models/da_v2_small.int8.onnx --sizes 518,364,252

For each file and size: the network shape a 640x480 photo gets under the file's resize rule
at that size, the median latency there (2 threads, sizes interleaved within each round), and
how far the whole pipeline's depth (at the photo's own resolution, as ``heatmap`` writes it)
moves from the first size's on the held-out built-in photos (``quantize.builtin_photos``):
AbsRel and delta<1.25 after the least-squares alignment relative depth allows. The output
change means something only for trained or trained-like weights (``tests/da_proxy.py``'s
stand-in here, when the real checkpoint is absent): say which in any figure quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from quantize import builtin_photos
from quantize.report import compare, summary
from runtime import DepthHeatmapper
from runtime.model.cpu import cpu_name, int8_flags
from runtime.model.metadata import INPUT_NAME
from runtime.model.preprocess import network_size

PHOTO = (480, 640)  # (height, width) the latency is measured at


def latency_ms(models: dict[int, DepthHeatmapper], rounds: int) -> dict[int, float]:
    """size -> median ms of one inference at a 640x480 photo's network shape, sizes
    alternating within every round after one discarded run each."""
    inputs = {}
    for size, hm in models.items():
        hw = network_size(*PHOTO, hm.info, size)
        inputs[size] = np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32)
        hm.session.run(None, {INPUT_NAME: inputs[size]})
    times: dict[int, list[float]] = {size: [] for size in models}
    for _ in range(rounds):
        for size, hm in models.items():
            start = time.perf_counter()
            hm.session.run(None, {INPUT_NAME: inputs[size]})
            times[size].append((time.perf_counter() - start) * 1000)
    return {size: float(np.median(t)) for size, t in times.items()}


def output_change(models: dict[int, DepthHeatmapper]) -> dict[int, dict]:
    """size -> AbsRel / delta1 of its depth against the first size's, per held-out photo."""
    photos = [(name, rgb[:, :, ::-1] if rgb.ndim == 3 else rgb)  # as decoded from a file: BGR
              for name, rgb in builtin_photos.load() if builtin_photos.source(name) in builtin_photos.HELD_OUT]
    sizes = list(models)
    reference = {name: models[sizes[0]].predict(bgr).depth for name, bgr in photos}
    out = {}
    for size in sizes[1:]:
        per_photo = [compare(models[size].predict(bgr).depth, reference[name]) for name, bgr in photos]
        out[size] = summary(per_photo, [name for name, _ in photos])
    return out


def one_file(path: str, sizes: list[int], rounds: int, engine: str) -> dict:
    models = {size: DepthHeatmapper(path, threads=2, input_size=size, engine=engine) for size in sizes}
    first = models[sizes[0]]
    row = {"file": Path(path).name, "model": first.info.description.id, "precision": first.info.precision,
           "engine": first.engine_choice.engine,
           "shapes": {size: "x".join(map(str, network_size(*PHOTO, hm.info, size))) for size, hm in models.items()},
           "latency_ms": latency_ms(models, rounds), "change_vs_first": output_change(models)}
    print(f"\n{row['file']} ({row['model']}, {row['precision']}, {row['engine']}); change against {sizes[0]}")
    print("| size | 640x480 photo runs at | ms | AbsRel mean / worst | delta<1.25 mean / worst |\n|---|---|---|---|---|")
    for size in sizes:
        c = row["change_vs_first"].get(size)
        change = (f"{c['mean_absrel']:.4f} / {c['worst_absrel']:.4f} | {c['mean_delta1']:.4f} / {c['worst_delta1']:.4f}"
                  if c else "(reference) | (reference)")
        print(f"| {size} | {row['shapes'][size]} | {row['latency_ms'][size]:.1f} | {change} |")
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--sizes", default="518,364,252", help="comma-separated; the first is the reference")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(set(sizes)) != len(sizes):
        parser.error(f"--sizes must be distinct, got {args.sizes}")
    cpu = {"name": cpu_name(), "flags": int8_flags(), "cores": os.cpu_count()}
    print(f"CPU: {cpu['name']}, {cpu['cores']} logical cores, flags {' '.join(cpu['flags'])}")
    result = {"cpu": cpu, "photo": f"{PHOTO[1]}x{PHOTO[0]}", "sizes": sizes,
              "files": [one_file(path, sizes, args.rounds, args.engine) for path in args.models]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
