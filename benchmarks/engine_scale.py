"""The job engine alone at scale: per-input cost in time and memory from ten thousand inputs
to a million, with inference made nearly free.

    python -m benchmarks.engine_scale                               # everything (about an hour on 2 cores)
    python -m benchmarks.engine_scale --counts 1000000 --plan 0 --s3-keys 0   # a million-input driver
    python -m benchmarks.engine_scale --counts 2000,4000,8000 --commands heatmap --plan 0 --s3-keys 0   # a smoke run

The model is one ONNX op (ReduceMean over the channels of a fixed 32x32 input, with the
project's metadata keys), so what is measured is everything else a job does per input:
discovery, plan, read and decode (tiny JPEGs), render, write and journal.

- ``heatmap`` and ``bulk`` (one node, the embedded Ray) on 10k, 50k and 150k inputs in
  folders of 1,000: marginal items/s between successive counts (flat: the second at least
  0.9 of the first), peak RSS (``/usr/bin/time -v``; for ``bulk`` also the driver's own
  high-water mark, since time's figure is the largest process of the tree), and a rerun
  with nothing to do (at most 5% of the job's time).
- Planning alone (``Job.prepare``) on local trees up to a million inputs, and on object-store
  keys served by a local S3 server (moto, in this process) up to ``--s3-keys``, extrapolated
  per key to a million, with the time spent waiting for the server's listings apart from the
  plan's own (moto lists far slower than S3).

Input trees: 150,000 tiny JPEGs written once (``--workdir`` keeps them between runs), larger
trees made of hard links to them.

Results go to stdout as JSON lines and to ``--json`` (default
``benchmarks/results/engine-scale-<cpu>.json``). Run it on a quiet machine: timings on a
shared one are noise (peak RSS is not).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PER_FOLDER = 1000
MASTER = 150_000  # inputs written as files; larger trees are hard links to these
TARGETS = {"marginal_ratio_min": 0.9, "rss_150k_over_10k_max": 1.25, "rerun_share_max": 0.05,
           "million_driver_rss_mb_max": 500}
DRIVER = """
import atexit, sys
path = sys.argv[1]
def hwm():
    kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    open(path, "w").write(str(kb))
atexit.register(hwm)
sys.argv = ["midas-onnx", *sys.argv[2:]]
from midas_onnx.cli import main
main(prog_name="midas-onnx")
"""
PLAN = """
import json, sys, time
from runtime.engine import Job, OutputSpec
t = time.perf_counter()
job = Job.prepare([sys.argv[1]], sys.argv[2], sys.argv[3], OutputSpec.make())
planned = time.perf_counter() - t
todo = sum(1 for _ in job.todo)
job.close()
kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"plan_s": round(planned, 3), "todo": todo, "peak_rss_mb": round(kb / 1024, 1)}))
"""
PLAN_URI = """
import json, sys, time
import pyarrow.fs  # imported before the clock starts, as for local paths
import runtime.engine.inputs as inputs
import runtime.engine.store as store
waited = [0.0]

class Timed:  # the filesystem, with the time spent waiting for the server's listings counted
    def __init__(self, fs):
        self.fs = fs
    def get_file_info(self, *args):
        t = time.perf_counter()
        try:
            return self.fs.get_file_info(*args)
        finally:
            waited[0] += time.perf_counter() - t
    def __getattr__(self, name):
        return getattr(self.fs, name)

real = store._arrow_fs
def timed_fs(uri):
    fs, path = real(uri)
    return Timed(fs), path
store._arrow_fs = inputs._arrow_fs = timed_fs
""" + PLAN.replace('"peak_rss_mb"', '"listing_s": round(waited[0], 3), "peak_rss_mb"')


def make_model(path: Path) -> Path:
    """The one-op model: image (1x3x32x32) -> ReduceMean over channels -> depth (1x32x32)."""
    import onnx
    from onnx import TensorProto, helper

    from runtime.model.metadata import ModelInfo, set_metadata

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["depth"], axes=[1], keepdims=0)], "engine_scale",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 32, 32])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, ModelInfo(name="engine_scale_reduce_mean", input_hw=(32, 32)).to_props())
    onnx.save(model, str(path))
    return path


def tiny_jpegs(count: int = 16) -> list[bytes]:
    """A few different 48x32 JPEGs (a few hundred bytes each)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    return [cv2.imencode(".jpg", rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))[1].tobytes() for _ in range(count)]


def write_tree(root: Path, count: int, master: Path | None = None) -> Path:
    """``count`` inputs in folders of ``PER_FOLDER``: written once (``master`` None), else
    hard links to the master tree's files (cheap, and no extra disk)."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == count:
        return root
    shutil.rmtree(root, ignore_errors=True)
    blobs = tiny_jpegs() if master is None else None
    master_count = None if master is None else sum(1 for _ in master.rglob("*.jpg"))
    for i in range(count):
        folder = root / f"{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        target = folder / f"{i:07d}.jpg"
        if blobs is not None:
            target.write_bytes(blobs[i % len(blobs)])
        else:
            j = i % master_count
            os.link(master / f"{j // PER_FOLDER:04d}" / f"{j:07d}.jpg", target)
    return root


def time_v(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds, peak RSS (MB, /usr/bin/time -v) and the output of one command."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"s": round(wall, 2), "tree_peak_rss_mb": round(int(match.group(1)) / 1024, 1) if match else None,
            "stdout": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""}


def run_command(command: str, src: Path, out: Path, model: Path, scratch: Path) -> dict:
    """One ``heatmap``/``bulk`` run through a wrapper that records the driver's own VmHWM."""
    hwm = scratch / "hwm.txt"
    args = [str(src), "-o", str(out)] if command == "heatmap" else [str(src), str(out)]
    got = time_v([sys.executable, "-c", DRIVER, str(hwm), command, *args, "--model", str(model)])
    got["driver_peak_rss_mb"] = round(int(hwm.read_text()) / 1024, 1)
    return got


def trees(work: Path, counts: list[int]) -> dict[int, Path]:
    """An input tree per count: ``MASTER`` files written once, every other tree hard links to
    them (a million files cost no more disk than the master's)."""
    size = min(max(counts), MASTER)
    master = write_tree(work / f"in-{size}", size)
    return {n: master if n == size else write_tree(work / f"in-{n}", n, master) for n in counts}


def scale(commands: list[str], counts: list[int], model: Path, work: Path) -> dict:
    inputs = trees(work, counts)
    results: dict = {}
    for command in commands:
        rows = []
        for count in counts:
            src = inputs[count]
            out = work / f"out-{command}-{count}"
            shutil.rmtree(out, ignore_errors=True)
            first = run_command(command, src, out, model, work)
            rerun = run_command(command, src, out, model, work)
            row = {"inputs": count, "job": first, "rerun": rerun, "rerun_share": round(rerun["s"] / first["s"], 3)}
            print(json.dumps({command: row}), flush=True)
            rows.append(row)
            shutil.rmtree(out, ignore_errors=True)
        marginal = [round((b["inputs"] - a["inputs"]) / (b["job"]["s"] - a["job"]["s"]), 1)
                    for a, b in zip(rows, rows[1:], strict=False)]
        results[command] = {
            "runs": rows,
            "marginal_items_per_s": marginal,
            "marginal_ratio": round(marginal[-1] / marginal[0], 3) if len(marginal) >= 2 else None,
            "driver_rss_ratio": round(rows[-1]["job"]["driver_peak_rss_mb"] / rows[0]["job"]["driver_peak_rss_mb"], 3),
        }
    return results


def plan_local(counts: list[int], model: Path, work: Path) -> list[dict]:
    inputs = trees(work, counts)
    rows = []
    for count in counts:
        src = inputs[count]
        out = work / f"plan-out-{count}"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-c", PLAN, str(src), str(out), str(model)], cwd=REPO,
                              capture_output=True, text=True, check=True)
        row = {"inputs": count, **json.loads(proc.stdout.strip().splitlines()[-1])}
        print(json.dumps({"plan_local": row}), flush=True)
        rows.append(row)
        shutil.rmtree(out, ignore_errors=True)
    return rows


@contextlib.contextmanager
def local_s3():
    """A real S3 server (moto) on a free loopback port, in this process: yields the
    environment that points pyarrow and boto3 at it (test credentials)."""
    from moto.server import ThreadedMotoServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.stop()


def plan_s3(counts: list[int], model: Path) -> list[dict]:
    """Planning keys listed from a local S3 server (moto), one bucket per count, extrapolated
    per key to a million. Keys go straight into moto's backend (a PUT per key would take
    longer than the plan). moto answers a listing far slower than S3 (it builds its XML in
    Python), so the time spent waiting for listings is counted apart, and the plan's own
    cost is the rest."""
    from moto.backends import get_backend

    rows = []
    with local_s3() as env:
        backend = get_backend("s3")["123456789012"]["global"]
        blobs = tiny_jpegs()
        for count in counts:
            bucket = f"bench-{count}"
            backend.create_bucket(bucket, "us-east-1")
            for i in range(count):
                backend.put_object(bucket, f"in/{i // PER_FOLDER:04d}/{i:07d}.jpg", blobs[i % len(blobs)])
            proc = subprocess.run([sys.executable, "-c", PLAN_URI, f"s3://{bucket}/in", f"s3://{bucket}/out",
                                   str(model)], cwd=REPO, capture_output=True, text=True,
                                  env={**env, "MIDAS_ONNX_STATE_DIR": str(model.parent / "state")})
            if proc.returncode != 0:
                raise SystemExit(f"object-store plan failed:\n{proc.stderr[-3000:]}")
            row = {"keys": count, **json.loads(proc.stdout.strip().splitlines()[-1])}
            own = row["plan_s"] - row["listing_s"]
            row["plan_own_s"] = round(own, 2)
            row["extrapolated_million_s"] = {"plan": round(row["plan_s"] / count * 1e6, 1),
                                             "plan_own": round(own / count * 1e6, 1)}
            print(json.dumps({"plan_s3": row}), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10000,50000,150000", help="inputs per job, comma-separated")
    parser.add_argument("--commands", default="heatmap,bulk")
    parser.add_argument("--plan", default="10000,150000,1000000",
                        help="local inputs to plan alone, comma-separated (0: none)")
    parser.add_argument("--s3-keys", default="25000,50000,100000",
                        help="object-store keys to plan alone, comma-separated (0: none)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the input trees here between runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from runtime.model.cpu import cpu_name

    ints = [lambda text: [int(v) for v in text.split(",") if int(v) > 0]][0]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="midas-engine-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / "reduce_mean_32.onnx")
    result: dict = {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d"),
                    "command": " ".join(["python -m benchmarks.engine_scale", *sys.argv[1:]]), "targets": TARGETS}
    try:
        commands = [c for c in args.commands.split(",") if c]
        if commands and ints(args.counts):
            result["scale"] = scale(commands, ints(args.counts), model, work)
        if ints(args.plan):
            result["plan_local"] = plan_local(ints(args.plan), model, work)
        if ints(args.s3_keys):
            result["plan_s3"] = plan_s3(ints(args.s3_keys), model)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    slug = re.sub(r"[^a-z0-9]+", "-", result["cpu"].lower()).strip("-")[:40]
    target = args.json or REPO / "benchmarks" / "results" / f"engine-scale-{slug}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "targets"}, indent=2))
    print(f"written: {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
