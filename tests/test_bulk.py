"""`midas-onnx bulk` on real Ray (no mocks): embedded local Ray, and a two-node cluster on
this machine with a worker killed mid-job."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import REPO

HANG_GUARD_S = 600  # a job that has not ended by then has hung (what fractional CPUs prevent)


def bulk(*args: str, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midas_onnx", "bulk", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def ray_processes() -> dict[int, str]:
    """Live processes of any Ray (raylet, GCS, dashboard, monitors, workers), by pid."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and ("ray::" in cmd or "/ray/" in cmd):
            found[int(proc.name)] = cmd[:120]
    return found


def manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def collection(tmp_path_factory, photo_set):
    src = tmp_path_factory.mktemp("collection")
    (src / "x").mkdir()
    (src / "y").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        cv2.imwrite(str(src / f"{name}.jpg"), photo_set[name][:, :, ::-1])
    cv2.imwrite(str(src / "x" / "a.png"), photo_set["rocket"][:, :, ::-1])
    cv2.imwrite(str(src / "y" / "a.png"), photo_set["camera"])  # same name, other folder
    (src / "empty.jpg").write_bytes(b"")
    (src / "y" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    return src


def test_local_run_rerun_and_force(collection, tmp_path, fixed_model, photo_set):
    out = tmp_path / "out"
    before = ray_processes()
    first = bulk(str(collection), str(out), "--model", str(fixed_model), "--chunk-size", "2", "--save-depth", "png16")
    assert first.returncode == 1, first.stderr  # the two broken files
    # The embedded Ray goes with the command (its monitor is now killed first, a second saved
    # on every run): nothing it started outlives it. Workers see their raylet go and exit on
    # their own, a moment after the driver; a leak would still be there after the guard.
    deadline = time.monotonic() + 30
    while (left := {pid: cmd for pid, cmd in ray_processes().items() if pid not in before}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
    assert "5 done, 0 skipped, 2 failed" in first.stdout
    assert f"failed: {collection / 'empty.jpg'}: empty file" in first.stderr
    assert "Traceback" not in first.stderr and "(raylet)" not in first.stderr + first.stdout
    rows = manifest(out)
    assert len(rows) == 7 and len({r["input"] for r in rows}) == 7
    by_rel = {r["relative"]: r for r in rows}
    assert by_rel["y/corrupt.png"]["status"] == "failed" and "not a decodable image" in by_rel["y/corrupt.png"]["error"]
    for rel, photo in [("astronaut.jpg", "astronaut"), ("x/a.png", "rocket"), ("y/a.png", "camera")]:
        row = by_rel[rel]
        assert row["status"] == "done" and row["node"] and row["pid"] > 0
        heat = cv2.imread(str(out / f"{rel}.heatmap.png"))
        depth = cv2.imread(str(out / f"{rel}.depth.png"), cv2.IMREAD_UNCHANGED)
        assert heat.shape[:2] == depth.shape == photo_set[photo].shape[:2] and depth.dtype == np.uint16
        assert row["outputs"] == [str(out / f"{rel}.heatmap.png"), str(out / f"{rel}.depth.png")]

    again = bulk(str(collection), str(out), "--model", str(fixed_model), "--save-depth", "png16")
    assert "0 done, 5 skipped, 2 failed" in again.stdout  # done work is skipped, failures retried
    assert sorted(r["status"] for r in manifest(out)) == ["done"] * 5 + ["failed"] * 2  # a skip keeps its done row

    forced = bulk(str(collection), str(out), "--model", str(fixed_model), "--save-depth", "png16", "--force")
    assert "5 done, 0 skipped, 2 failed" in forced.stdout


def test_every_output_and_video_matches_the_heatmap_command(collection, tmp_path, fixed_model, photo_set):
    from .test_heatmap_cli import write_video

    src = tmp_path / "src"
    src.mkdir()
    for path in collection.rglob("*.jpg"):
        if path.stat().st_size:
            (src / path.name).write_bytes(path.read_bytes())
    write_video(src / "clip.avi", photo_set["coffee"], frames=6, fourcc="MJPG")
    points = tmp_path / "points.csv"
    points.write_text("x,y,depth_m\n10,10,3.0\n100,50,3.0\n200,120,3.0\n50,150,3.0\n")  # any model fits these
    options = ["--colormap", "turbo", "--save-depth", "pfm", "--overlay", "--save-ply", "--ply-step", "8",
               "--known-depths", str(points)]
    bulk_out, cli_out = tmp_path / "bulk", tmp_path / "cli"
    r = bulk(str(src), str(bulk_out), "--model", str(fixed_model), "--chunk-size", "2", *options)
    c = subprocess.run([sys.executable, "-m", "midas_onnx", "heatmap", str(src), "-o", str(cli_out),
                        "--model", str(fixed_model), *options], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == c.returncode == 0, (r.stderr, c.stderr)
    assert "4 done (1 videos, 6 frames)" in r.stdout and "4 done (1 videos, 6 frames)" in c.stdout
    made = sorted(str(p.relative_to(bulk_out)) for p in bulk_out.rglob("*") if p.is_file() and p.name[0] != ".")
    assert made == sorted(str(p.relative_to(cli_out)) for p in cli_out.rglob("*") if p.is_file() and p.name[0] != ".")
    for suffix in (".heatmap.png", ".overlay.png", ".depth.pfm", ".ply", ".align.json", ".heatmap.mp4"):
        assert any(m.endswith(suffix) for m in made), suffix
    for rel in made:
        if rel.endswith((".png", ".pfm", ".ply", ".align.json")) and "/" not in rel:
            assert (bulk_out / rel).read_bytes() == (cli_out / rel).read_bytes(), rel  # one engine: same bytes
    for name in ("job.json",):
        a, b = json.loads((bulk_out / name).read_text()), json.loads((cli_out / name).read_text())
        assert a["outputs"] == b["outputs"] and a["model_sha256"] == b["model_sha256"]


def test_bad_arguments_are_one_line_before_ray_starts(tmp_path, fixed_model):
    r = bulk(str(tmp_path / "nowhere"), str(tmp_path / "out"), "--model", str(fixed_model))
    assert r.returncode == 2 and r.stderr == f"error: no input files; {tmp_path / 'nowhere'}: no such file or folder\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = bulk(str(empty), str(tmp_path / "out"), "--model", str(fixed_model))
    assert r.returncode == 2 and r.stderr.startswith(f"error: no input files; {empty}: folder has no images or videos")
    r = bulk(str(tmp_path), str(tmp_path / "out"), "--model", str(fixed_model), "--colormap", "nope")
    assert r.returncode == 1 and "unknown colormap" in r.stderr
    (tmp_path / "photo.jpg").write_bytes(b"x")
    corrupt = tmp_path / "out2"
    corrupt.mkdir()
    (corrupt / "job.json").write_text("[1, 2")
    r = bulk(str(tmp_path / "photo.jpg"), str(corrupt), "--model", str(fixed_model))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {corrupt / 'job.json'}: not a job file midas-onnx wrote")
    for model, message in [(tmp_path / "absent.onnx", "model file not found"),
                           (REPO / "README.md", "is not a usable ONNX model")]:
        sessions = set(Path("/tmp/ray").glob("session_2*"))
        r = bulk(str(tmp_path), str(tmp_path / "out"), "--model", str(model))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
        assert set(Path("/tmp/ray").glob("session_2*")) == sessions  # refused on the driver: Ray never started


def test_small_jobs_are_split_so_every_worker_gets_some():
    from bulk.scheduler import chunk_size

    assert chunk_size(600, 64, 2) == 64
    assert chunk_size(12, 64, 2) == 3  # two chunks in flight on each of 2 workers
    assert chunk_size(7, 2, 2) == 2
    assert chunk_size(3, 64, 8) == 1
    assert chunk_size(1, 64, 2) == 1


def test_two_node_cluster_survives_a_killed_worker(tmp_path, fixed_model, photo_set):
    from ray.cluster_utils import Cluster

    src = tmp_path / "many"
    src.mkdir()
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    total = 120  # long enough that both nodes' actors work before and after the kill
    for i in range(total):
        small = cv2.resize(photo_set[names[i % 4]][:, :, ::-1], (320, 240))
        cv2.imwrite(str(src / f"{i:03d}.jpg"), small)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    monitors = set(subprocess.run(["pgrep", "-f", "autoscaler/_private/monitor.py"], capture_output=True,
                                  text=True).stdout.split())
    try:
        # OUTPUT relative to the driver's folder: resolved there, never in each worker's own
        proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "bulk", str(src), "out", "--model", str(fixed_model),
                                 "--address", cluster.address, "--chunk-size", "2", "--workers", "2",
                                 "--threads-per-worker", "1"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pattern = "ray::NodeWorker"
        deadline = time.time() + HANG_GUARD_S
        while True:  # both workers up (one per node) and work flowing
            actors = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
            if len(actors) >= 2 and len(list(out.rglob("*.heatmap.png"))) >= 10:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.1)
        # Kill the oldest actor: it has surely done work, and the other node's actor carries on.
        oldest = subprocess.run(["pgrep", "-o", "-f", pattern], capture_output=True, text=True).stdout.strip()
        subprocess.run(["kill", "-9", oldest], check=True)
        killed_at = len(list(out.rglob("*.heatmap.png")))
        stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
        alive = set(subprocess.run(["pgrep", "-f", "autoscaler/_private/monitor.py"], capture_output=True,
                                   text=True).stdout.split())
        assert monitors <= alive  # a cluster it joined keeps its monitor: only a Ray it started loses it
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, stderr
    assert killed_at < total  # the kill landed mid-job
    assert f"{total} done, 0 skipped, 0 failed" in stdout and "on 2 node(s)" in stdout
    rows = manifest(out)
    assert len(rows) == total and {r["status"] for r in rows} == {"done"}
    assert len({r["input"] for r in rows}) == total  # every input exactly once
    assert len({r["node"] for r in rows}) == 2
    assert len(list(out.rglob("*.heatmap.png"))) == total and not list(out.rglob("*.tmp"))


def test_settings_change_is_refused_and_output_inside_input_is_never_read(tmp_path, fixed_model, photo_set):
    src = tmp_path / "photos"
    src.mkdir()
    for name in ("coffee", "chelsea"):
        cv2.imwrite(str(src / f"{name}.jpg"), photo_set[name][:, :, ::-1])
    out = src / "depth"  # inside the input folder
    assert bulk(str(src), str(out), "--model", str(fixed_model)).returncode == 0
    again = bulk(str(src), str(out), "--model", str(fixed_model))
    assert again.returncode == 0 and "0 done, 2 skipped, 0 failed" in again.stdout  # outputs were not inputs
    other = bulk(str(src), str(out), "--model", str(fixed_model), "--colormap", "turbo")
    assert other.returncode == 2
    assert other.stderr.startswith(f"error: {out} holds outputs made with other settings "
                                   "(outputs.colormap inferno -> turbo)")
    forced = bulk(str(src), str(out), "--model", str(fixed_model), "--colormap", "turbo", "--force")
    assert forced.returncode == 0 and "2 done" in forced.stdout
    assert json.loads((out / "job.json").read_text())["outputs"]["colormap"] == "turbo"


def test_an_input_that_kills_its_worker_is_retried_a_bounded_number_of_times(collection, tmp_path, fixed_model):
    import os

    env = {**os.environ, "MIDAS_ONNX_TEST_CRASH_ON": "astronaut"}  # the worker exits on reading it
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "midas_onnx", "bulk", str(collection), str(out), "--model", str(fixed_model),
                        "--chunk-size", "4", "--workers", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=HANG_GUARD_S, env=env)
    assert r.returncode == 1
    assert "4 done, 0 skipped, 3 failed" in r.stdout  # its chunk-mates were redone one by one
    assert f"failed: {collection / 'astronaut.jpg'}: the worker process died on each of 4 tries" in r.stderr
    assert "Traceback" not in r.stderr and "(raylet)" not in r.stderr + r.stdout
    rows = {row["relative"]: row for row in manifest(out)}
    assert len(rows) == 7 and rows["astronaut.jpg"]["status"] == "failed"


def test_a_library_exception_in_a_worker_is_its_rows_error_and_the_log_keeps_the_traceback(collection, tmp_path,
                                                                                          fixed_model):
    import os

    env = {**os.environ, "MIDAS_ONNX_TEST_RAISE_ON": "coffee"}  # a plain RuntimeError in the pipeline
    r = subprocess.run([sys.executable, "-m", "midas_onnx", "bulk", str(collection), str(tmp_path / "out"),
                        "--model", str(fixed_model)], cwd=REPO, capture_output=True, text=True,
                       timeout=HANG_GUARD_S, env=env)
    assert r.returncode == 1 and "4 done, 0 skipped, 3 failed" in r.stdout
    assert f"failed: {collection / 'coffee.jpg'}: RuntimeError: fault injected for tests" in r.stderr
    assert "died" not in r.stderr and "Traceback" not in r.stderr
    row = {row["relative"]: row for row in manifest(tmp_path / "out")}["coffee.jpg"]
    assert row["status"] == "failed" and "RuntimeError: fault injected for tests" in row["error"]
    text = Path(row["log"]).read_text()  # the worker's log on its node, named by the row
    assert "Traceback" in text and "fault injected for tests" in text
    assert f":{row['log']}" in r.stdout  # and by the summary


def test_a_worker_that_cannot_start_is_one_line(collection, tmp_path, fixed_model):
    import os

    env = {**os.environ, "MIDAS_ONNX_TEST_CRASH_ON": "__init__"}
    r = subprocess.run([sys.executable, "-m", "midas_onnx", "bulk", str(collection), str(tmp_path / "out"),
                        "--model", str(fixed_model)], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S,
                       env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: workers could not start (4 tries): ")
    assert "RuntimeError: worker start failed (fault injected for tests)" in lines[0] and "(Ray's output: " in lines[0]


def test_a_killed_driver_loses_nothing_finished_and_resumes(tmp_path, fixed_model, photo_set):
    src = tmp_path / "many"
    src.mkdir()
    total = 240
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    for i in range(total):
        cv2.imwrite(str(src / f"{i:03d}.jpg"), cv2.resize(photo_set[names[i % 4]][:, :, ::-1], (320, 240)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "bulk", str(src), str(out), "--model", str(fixed_model),
                             "--chunk-size", "2"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    journal = out / "manifest.jsonl"

    def rows_recorded() -> int:  # rows reach the journal at once, the manifest every few seconds
        files = [f for f in (journal, out / ".manifest.journal") if f.exists()]
        return len({line for f in files for line in f.read_text().splitlines() if line.strip().endswith("}")})

    deadline = time.time() + HANG_GUARD_S
    while rows_recorded() < 10:  # work recorded as it finishes
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    import os
    import signal

    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its Ray processes are left to die with it
    proc.wait()
    text = journal.read_text() + ((out / ".manifest.journal").read_text() if (out / ".manifest.journal").exists() else "")
    recorded = [json.loads(line) for line in text.splitlines() if line.strip().endswith("}")]
    manifest_rows = journal.read_text().splitlines() if journal.exists() else []
    assert len(manifest_rows) == len({json.loads(x)["input"] for x in manifest_rows})  # one row per input, always
    done_before = {r["input"] for r in recorded if r["status"] == "done"}
    assert 10 <= len(done_before) < total
    assert all((out / (r["relative"] + ".heatmap.png")).is_file() for r in recorded)  # recorded = written
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # then the embedded Ray the kill orphaned (its own session)
    resumed = bulk(str(src), str(out), "--model", str(fixed_model), "--chunk-size", "2")
    assert resumed.returncode == 0, resumed.stderr
    skipped = int(resumed.stdout.split(" skipped")[0].rsplit(" ", 1)[1])
    assert skipped >= len(done_before)  # nothing finished is done twice
    rows = manifest(out)
    assert len(rows) == total and len({r["input"] for r in rows}) == total  # one row per input
    assert {r["status"] for r in rows} == {"done"}
    assert len(list(out.rglob("*.heatmap.png"))) == total and not list(out.rglob("*.tmp"))
