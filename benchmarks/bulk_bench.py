"""The job engine's cost on one machine: `heatmap` against inference alone, and `bulk`
(the same engine on Ray) against `heatmap`, on the same photos.

    python -m benchmarks.bulk_bench --model models/midas_small.int8.onnx --count 600 --runs 2

Both commands run as a user runs them (fresh processes, start-up included), same model, same
photos at 640x480 made from scikit-image samples. Per run: a one-photo job of each (start-up:
command to exit), then the whole set. Steady-state throughput takes the one-photo time out:
``(count - 1) / (T_count - T_1)``. Inference alone is the same model on the same photos'
network inputs (pre-processed beforehand), batch 1, timed in-process two ways: one session
with a thread per core, and one 1-thread session per core run side by side (as `heatmap`'s
workers run it). Targets: bulk steady state >= 0.95 of heatmap's; heatmap's steady state
>= 0.85 of inference alone (one session, all cores), in every run.

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
TARGETS = {"steady_ratio_min": 0.95, "heatmap_vs_inference_min": 0.85}


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
            "bulk_startup_s": round(times["bulk_one_s"], 2),
            "bulk_startup_floor_s": round(cpu["bulk_one_cpu_s"] / cores, 2),
            "cpu_ms_per_image": {n: round(1000 * (cpu[f"{n}_all_cpu_s"] - cpu[f"{n}_one_cpu_s"]) / (count - 1), 1)
                                 for n in ("heatmap", "bulk")},
            "heatmap_steady_images_per_s": round(steady["heatmap"], 1),
            "bulk_steady_images_per_s": round(steady["bulk"], 1),
            "steady_ratio": round(steady["bulk"] / steady["heatmap"], 3),
            "wall_ratio": round(times["bulk_all_s"] / times["heatmap_all_s"], 3)}


def inference_only(model: str, photos: list[Path], seconds: float = 6.0) -> dict:
    """Images/s of inference alone on the photos' network inputs: one session with all
    cores, and one 1-thread session per core side by side."""
    from concurrent.futures import ThreadPoolExecutor

    from runtime import DepthHeatmapper

    cores = len(os.sched_getaffinity(0))
    inputs = [DepthHeatmapper(model, threads=1).preprocess(p) for p in photos[:32]]

    def loop(hm, deadline: float) -> int:
        n = 0
        while time.perf_counter() < deadline:
            hm._run(inputs[n % len(inputs)])
            n += 1
        return n

    out = {}
    for label, sessions in (("one_session_all_cores", [DepthHeatmapper(model, threads=cores)]),
                            ("one_thread_sessions_per_core", [DepthHeatmapper(model, threads=1) for _ in range(cores)])):
        for hm in sessions:
            loop(hm, time.perf_counter() + 0.5)  # warm-up
        deadline = time.perf_counter() + seconds
        with ThreadPoolExecutor(len(sessions)) as pool:
            done = sum(pool.map(lambda hm: loop(hm, deadline), sessions))
        out[label] = round(done / seconds, 1)
    return out


def ray_call_cost(calls: int = 100) -> dict:
    """Ray core's own CPU per chunk of 64 items (paths and output names, as bulk sends them),
    each row streamed back on its own as bulk's workers send them, taken by the driver as
    bulk's ``RayBackend`` takes them; counted machine-wide. Bulk pays it once per chunk."""
    import ray

    from bulk.ray_backend import ready, take
    from bulk.scheduler import END
    from runtime.engine import Item

    @ray.remote(num_cpus=0.5)
    class Noop:
        def run(self, items: list):
            for i in items:
                yield {"input": i.source, "status": "done"}

    chunk = [Item(f"/photos/{i:05d}.jpg", f"{i:05d}.jpg", False, {"heatmap": f"/out/{i:05d}.jpg.heatmap.png"})
             for i in range(64)]
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        actor = Noop.remote()

        def one_chunk() -> None:
            stream, got = actor.run.options(num_returns="streaming").remote(chunk), []
            while END not in got:
                if ready([stream], 1.0):
                    got += take(stream)

        for _ in range(10):  # warm
            one_chunk()
        before = busy_cpu_s()
        for _ in range(calls):
            one_chunk()
        cpu = busy_cpu_s() - before
    finally:
        ray.shutdown()
    return {"calls": calls, "items_per_call": len(chunk), "rows_streamed": True,
            "cpu_ms_per_call": round(1000 * cpu / calls, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "midas_small.int8.onnx"))
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    from runtime.model.cpu import cpu_name, int8_flags

    with tempfile.TemporaryDirectory(prefix="midas-bulk-bench-") as tmp:
        tmp = Path(tmp)
        photos, single = tmp / "photos", tmp / "single"
        paths = write(photos, (640, 480), args.count)
        single.mkdir()
        shutil.copy(paths[0], single / paths[0].name)
        exe = [sys.executable, "-m", "midas_onnx"]
        runs = []
        for _ in range(args.runs):
            run = one_run(exe, args.model, photos, single, tmp, args.count)
            run["inference_only_images_per_s"] = inference_only(args.model, paths)
            run["heatmap_vs_inference"] = round(
                run["heatmap_steady_images_per_s"] / run["inference_only_images_per_s"]["one_session_all_cores"], 3)
            runs.append(run)
    call_cost = ray_call_cost()
    met = {
        "steady_ratio": all(r["steady_ratio"] >= TARGETS["steady_ratio_min"] for r in runs),
        "heatmap_vs_inference": all(r["heatmap_vs_inference"] >= TARGETS["heatmap_vs_inference_min"] for r in runs),
    }
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "command": "python -m benchmarks.bulk_bench " + " ".join(sys.argv[1:]),
                      "cpu": cpu_name(), "flags": int8_flags(), "photos": args.count, "size": "640x480",
                      "model": args.model, "targets": TARGETS, "runs": runs, "ray_call_cost": call_cost,
                      "met_in_every_run": met}, indent=2))


if __name__ == "__main__":
    main()
