"""Ray's cost on one machine: `midas-onnx bulk` against `midas-onnx heatmap` on the same photos.

    python -m benchmarks.bulk_bench --model models/midas_small.int8.onnx --count 600 --runs 2

Both commands run as a user runs them (fresh processes, start-up included), same model, same
photos at 640x480 made from scikit-image samples. Per run: a one-photo job of each (start-up:
command to exit), then the whole set. Steady-state throughput takes the one-photo time out:
``(count - 1) / (T_count - T_1)``. Targets (issue 14): bulk start-up <= 5 s, steady-state >=
0.9 of heatmap's, whole-set wall time <= 1.25x heatmap's, in every run.

Each command's CPU time is counted machine-wide (user + system from /proc/stat, so Ray's
own processes count): a one-photo bulk run's CPU seconds divided by the cores is the floor
under its start-up on this machine, whatever bulk's own code does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.photos import write

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"bulk_startup_s_max": 5.0, "steady_ratio_min": 0.9, "wall_ratio_max": 1.25}


def busy_cpu_s() -> float:
    """CPU seconds spent so far by the whole machine (user + nice + system + irq + softirq)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, machine-wide CPU seconds) of one command."""
    t, cpu = time.perf_counter(), busy_cpu_s()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t, busy_cpu_s() - cpu


def one_run(exe: list[str], model: str, photos: Path, single: Path, tmp: Path, count: int) -> dict:
    times, cpu = {}, {}
    for name, sub in (("heatmap", ["heatmap"]), ("bulk", ["bulk"])):
        for label, src in (("one", single), ("all", photos)):
            out = tmp / f"{name}-{label}"
            shutil.rmtree(out, ignore_errors=True)
            args = [str(src), "-o", str(out)] if name == "heatmap" else [str(src), str(out)]
            times[f"{name}_{label}_s"], cpu[f"{name}_{label}_cpu_s"] = timed([*exe, *sub, *args, "--model", model])
    steady = {n: (count - 1) / (times[f"{n}_all_s"] - times[f"{n}_one_s"]) for n in ("heatmap", "bulk")}
    cores = len(os.sched_getaffinity(0))
    return {**{k: round(v, 2) for k, v in times.items()}, **{k: round(v, 1) for k, v in cpu.items()},
            "bulk_startup_floor_s": round(cpu["bulk_one_cpu_s"] / cores, 2),
            "cpu_ms_per_image": {n: round(1000 * (cpu[f"{n}_all_cpu_s"] - cpu[f"{n}_one_cpu_s"]) / (count - 1), 1)
                                 for n in ("heatmap", "bulk")},
            "heatmap_steady_images_per_s": round(steady["heatmap"], 1),
            "bulk_steady_images_per_s": round(steady["bulk"], 1),
            "steady_ratio": round(steady["bulk"] / steady["heatmap"], 3),
            "wall_ratio": round(times["bulk_all_s"] / times["heatmap_all_s"], 3)}


def ray_task_cost(rows: int = 600) -> dict:
    """Ray Data's own CPU per task here: a do-nothing actor UDF over ``rows`` rows, four rows a
    task and then one, in one local Ray (actors started afresh in each pass, helpers warm).
    The difference in machine-wide CPU over the difference in tasks is what one more task
    costs, driver, raylet and worker together: bulk pays it once per ``--batch-size`` images."""
    import ray

    class Noop:
        def __call__(self, batch: dict) -> dict:
            return {"path": list(batch["path"])}

    import logging

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # after Ray Data has set up its loggers
    ctx.enable_progress_bars = ctx.print_on_execution_start = False
    cpu = {}
    try:
        for per_task in (4, 4, 1):  # the first pass only starts Ray Data's helper actors
            ds = ray.data.from_items([{"path": f"/{i}.jpg"} for i in range(rows)], override_num_blocks=rows // per_task)
            ds = ds.map_batches(Noop, batch_size=per_task, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.75)
            before = busy_cpu_s()
            assert sum(len(b["path"]) for b in ds.iter_batches(batch_size=None)) == rows
            cpu[per_task] = busy_cpu_s() - before
    finally:
        ray.shutdown()
    return {"rows": rows, "cpu_s_4_per_task": round(cpu[4], 2), "cpu_s_1_per_task": round(cpu[1], 2),
            "cpu_ms_per_task": round(1000 * (cpu[1] - cpu[4]) / (rows - rows // 4), 1)}


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
    task_cost = ray_task_cost()
    met = {
        "bulk_startup": all(r["bulk_one_s"] <= TARGETS["bulk_startup_s_max"] for r in runs),
        "steady_ratio": all(r["steady_ratio"] >= TARGETS["steady_ratio_min"] for r in runs),
        "wall_ratio": all(r["wall_ratio"] <= TARGETS["wall_ratio_max"] for r in runs),
    }
    print(json.dumps({"cpu": cpu_name(), "flags": int8_flags(), "photos": args.count, "size": "640x480",
                      "model": args.model, "targets": TARGETS, "runs": runs, "ray_data_task_cost": task_cost,
                      "met_in_every_run": met}, indent=2))


if __name__ == "__main__":
    main()
