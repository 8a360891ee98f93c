"""`midas-onnx bulk` on real Ray (no mocks), kept to what only Ray shows: the embedded
local Ray up and down with nothing left behind, the same outputs as `heatmap`, a worker that
cannot start, a killed driver, and a two-node cluster with a worker killed mid-job. The
scheduler's retries, splits, start-failure counting and hung workers are tested with fake
workers in tests/test_engine_scheduler.py; the engine's plan and journal in test_engine.py.

Processes are found by their own session or by the pid a manifest row names, never by name
on the whole machine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import REPO
from .test_engine import tiny_model  # noqa: F401 - the one-op model (a session fixture)

HANG_GUARD_S = 600  # a job that has not ended by then has hung (what fractional CPUs prevent)


def bulk(*args: str, timeout: float = HANG_GUARD_S, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midas_onnx", "bulk", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def in_session(sid: int) -> dict[int, str]:
    """Live processes of one session (what a command started in its own session started)."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[3]) == sid and stat[0] != "Z":
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_session(sid: int) -> None:
    """SIGKILL to every process of a session: a command and the local Ray it started (Ray
    puts its workers in process groups of their own, so killing the group is not enough)."""
    for pid in in_session(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def journal_rows(out) -> list[dict]:
    """Rows committed so far (the journal is read while the job writes it: WAL readers wait for no one)."""
    path = out / ".journal.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [json.loads(d) for (d,) in db.execute("SELECT data FROM rows")]
    except sqlite3.OperationalError:  # created but no table yet
        return []
    finally:
        db.close()


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


def test_local_run_library_errors_and_rerun(collection, tmp_path, fixed_model, photo_set):
    out = tmp_path / "out"
    env = {**os.environ, "MIDAS_ONNX_TEST_RAISE_ON": "coffee"}  # a plain RuntimeError in the pipeline
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "bulk", str(collection), str(out), "--model",
                             str(fixed_model), "--chunk-size", "2", "--save-depth", "png16"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 1, stderr  # the two broken files and the library error
    # The embedded Ray goes with the command: nothing it started (all in the command's own
    # session) outlives it. Workers see their raylet go and exit on their own, a moment after.
    deadline = time.monotonic() + 30
    while (left := in_session(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
    assert "4 done, 0 skipped, 3 failed" in stdout
    assert f"failed: {collection / 'empty.jpg'}: empty file" in stderr
    assert f"failed: {collection / 'coffee.jpg'}: RuntimeError: fault injected for tests" in stderr
    assert "Traceback" not in stderr and "(raylet)" not in stderr + stdout and "died" not in stderr
    rows = manifest(out)
    assert len(rows) == 7 and len({r["input"] for r in rows}) == 7
    by_rel = {r["relative"]: r for r in rows}
    assert by_rel["y/corrupt.png"]["status"] == "failed" and "not a decodable image" in by_rel["y/corrupt.png"]["error"]
    text = Path(by_rel["coffee.jpg"]["log"]).read_text()  # the worker's log on its node, named by the row
    assert "Traceback" in text and "fault injected for tests" in text
    assert f":{by_rel['coffee.jpg']['log']}" in stdout  # and by the summary
    for rel, photo in [("astronaut.jpg", "astronaut"), ("x/a.png", "rocket"), ("y/a.png", "camera")]:
        row = by_rel[rel]
        assert row["status"] == "done" and row["node"] and row["pid"] > 0
        heat = cv2.imread(str(out / f"{rel}.heatmap.png"))
        depth = cv2.imread(str(out / f"{rel}.depth.png"), cv2.IMREAD_UNCHANGED)
        assert heat.shape[:2] == depth.shape == photo_set[photo].shape[:2] and depth.dtype == np.uint16
        assert row["outputs"] == [str(out / f"{rel}.heatmap.png"), str(out / f"{rel}.depth.png")]

    again = bulk(str(collection), str(out), "--model", str(fixed_model), "--save-depth", "png16")
    assert "1 done, 4 skipped, 2 failed" in again.stdout  # done work is skipped, failures retried
    assert sorted(r["status"] for r in manifest(out)) == ["done"] * 5 + ["failed"] * 2


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
    from .test_engine import cli

    c = cli("heatmap", src, "-o", cli_out, "--model", fixed_model, *options)
    assert r.returncode == c.exit_code == 0, (r.stderr, c.output)
    assert "4 done (1 videos, 6 frames)" in r.stdout and "4 done (1 videos, 6 frames)" in c.stdout
    made = sorted(str(p.relative_to(bulk_out)) for p in bulk_out.rglob("*") if p.is_file() and p.name[0] != ".")
    assert made == sorted(str(p.relative_to(cli_out)) for p in cli_out.rglob("*") if p.is_file() and p.name[0] != ".")
    for suffix in (".heatmap.png", ".overlay.png", ".depth.pfm", ".ply", ".align.json", ".heatmap.mp4"):
        assert any(m.endswith(suffix) for m in made), suffix
    for rel in made:
        if rel.endswith((".png", ".pfm", ".ply", ".align.json")) and "/" not in rel:
            assert (bulk_out / rel).read_bytes() == (cli_out / rel).read_bytes(), rel  # one engine: same bytes
    a, b = json.loads((bulk_out / "job.json").read_text()), json.loads((cli_out / "job.json").read_text())
    assert a["outputs"] == b["outputs"] and a["model_sha256"] == b["model_sha256"]


def test_depth_anything_metric_file_on_openvino_at_an_input_size(tmp_path_factory, tmp_path, photo_set):
    """bulk takes a Depth Anything file unchanged: every worker runs it with the command's
    --input-size and --engine (OpenVINO: its depth, not onnxruntime's), the depth files hold
    the model's metres, job.json its description; another input size is refused before Ray."""
    from runtime import DepthHeatmapper

    from .test_engine import cli
    from .test_metric_outputs import SIZE, da_file

    model = da_file(tmp_path_factory)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("coffee", "chelsea", "rocket"):
        cv2.imwrite(str(src / f"{name}.jpg"), cv2.resize(photo_set[name][:, :, ::-1], (160, 120)))
    out = tmp_path / "out"
    r = bulk(str(src), str(out), "--model", str(model), "--input-size", SIZE, "--engine", "openvino",
             "--save-depth", "npy", "--chunk-size", "1")
    assert r.returncode == 0, r.stderr
    assert "3 done, 0 skipped, 0 failed" in r.stdout
    record = json.loads((out / "job.json").read_text())
    assert record["description"]["id"] == "da-v2-small-metric-indoor" and record["description"]["input"]["size"] == 140
    openvino = DepthHeatmapper(model, threads=1, input_size=int(SIZE), engine="openvino")
    onnxruntime = DepthHeatmapper(model, threads=1, input_size=int(SIZE))
    for name in ("coffee", "chelsea", "rocket"):
        got = np.load(out / f"{name}.jpg.depth.npy")
        np.testing.assert_array_equal(got, openvino.predict(src / f"{name}.jpg").depth)
        assert not np.array_equal(got, onnxruntime.predict(src / f"{name}.jpg").depth)
        assert 0 < got.min() and got.max() < 20
    refused = cli("bulk", src, out, "--model", model, "--input-size", "252")
    assert refused.exit_code == 2 and len(refused.stderr.splitlines()) == 1
    assert "model da-v2-small-metric-indoor: input.size 140 -> 252" in refused.stderr


def test_bad_arguments_are_one_line_before_ray_starts(tmp_path, fixed_model, monkeypatch):
    import bulk.pipeline

    from .test_engine import cli

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started for a job that is refused on the driver")

    monkeypatch.setattr(bulk.pipeline, "with_ray", no_ray)
    r = cli("bulk", tmp_path / "nowhere", tmp_path / "out", "--model", fixed_model)
    assert r.exit_code == 2 and r.stderr == f"error: no input files; {tmp_path / 'nowhere'}: no such file or folder\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("bulk", empty, tmp_path / "out", "--model", fixed_model)
    assert r.exit_code == 2 and r.stderr.startswith(f"error: no input files; {empty}: folder has no images or videos")
    (tmp_path / "photo.jpg").write_bytes(b"x")
    corrupt = tmp_path / "out2"
    corrupt.mkdir()
    (corrupt / "job.json").write_text("[1, 2")
    r = cli("bulk", tmp_path / "photo.jpg", corrupt, "--model", fixed_model)
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {corrupt / 'job.json'}: not a job file midas-onnx wrote")
    for model, message in [(tmp_path / "absent.onnx", "model file not found"),
                           (REPO / "README.md", "is not a usable ONNX model")]:
        r = cli("bulk", tmp_path, tmp_path / "out", "--model", model)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


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
    try:
        # OUTPUT relative to the driver's folder: resolved there, never in each worker's own
        proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "bulk", str(src), "out", "--model", str(fixed_model),
                                 "--address", cluster.address, "--chunk-size", "2", "--workers", "2",
                                 "--threads-per-worker", "1"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + HANG_GUARD_S
        while len({r["pid"] for r in journal_rows(out)}) < 2 or len(rows := journal_rows(out)) < 10:  # both at work
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.1)
        # Kill the worker that made the first row (a pid a row names): the other node's carries on.
        victim = min(rows, key=lambda r: r["finished"])["pid"]
        os.kill(victim, signal.SIGKILL)
        killed_at = len(journal_rows(out))
        stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, stderr
    assert killed_at < total  # the kill landed mid-job
    assert f"{total} done, 0 skipped, 0 failed" in stdout and "on 2 node(s)" in stdout
    rows = manifest(out)
    assert len(rows) == total and {r["status"] for r in rows} == {"done"}
    assert len({r["input"] for r in rows}) == total  # every input exactly once
    assert len({r["node"] for r in rows}) == 2 and victim in {r["pid"] for r in rows}
    assert len(list(out.rglob("*.heatmap.png"))) == total and not list(out.rglob("*.tmp"))


def test_a_worker_that_cannot_start_is_one_line(collection, tmp_path, fixed_model):
    env = {**os.environ, "MIDAS_ONNX_TEST_CRASH_ON": "__init__"}
    r = bulk(str(collection), str(tmp_path / "out"), "--model", str(fixed_model), env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: workers could not start (4 tries each): ")
    assert "RuntimeError: worker start failed (fault injected for tests)" in lines[0] and "(Ray's output: " in lines[0]


def tiny_inputs(folder: Path, count: int, photo) -> Path:
    """``count`` small JPEGs (one photo's bytes): with the one-op model, a job of thousands
    costs seconds, long enough to be killed mid-way."""
    folder.mkdir()
    data = cv2.imencode(".jpg", cv2.resize(photo[:, :, ::-1], (64, 48)))[1].tobytes()
    for i in range(count):
        (folder / f"{i:04d}.jpg").write_bytes(data)
    return folder


def test_a_killed_driver_redoes_at_most_what_was_in_flight(tmp_path, tiny_model, photo_set):
    """Rows land one by one, not per chunk of 64: after kill -9 of the driver at any moment
    (here: 200 outputs written, mid-way through the job, in chunks of 64), every output on
    disk has its row but those of the inputs in flight (running on the worker, or their rows
    on the way to the driver), and the rerun redoes only those."""
    total = 1200
    src = tiny_inputs(tmp_path / "many", total, photo_set["coffee"])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "bulk", str(src), str(out), "--model", str(tiny_model),
                             "--threads-per-worker", "2"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + HANG_GUARD_S
    while len(list(out.glob("*.heatmap.png"))) < 200:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    kill_session(proc.pid)  # the driver and the embedded Ray it started
    proc.wait()
    deadline = time.monotonic() + 30
    while in_session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not in_session(proc.pid)
    recorded = {r["input"] for r in journal_rows(out) if r["status"] == "done"}
    written = {str(src / p.name.removesuffix(".heatmap.png")) for p in out.glob("*.heatmap.png")}
    assert 0 < len(recorded) < total and recorded <= written
    # Running: two chunks at once on the worker, each up to 2 x threads inputs; on the way:
    # rows the driver had not taken yet (a few, on a loaded machine). Far below a chunk.
    in_flight = 2 * 2 * 2
    assert len(written - recorded) <= 3 * in_flight, len(written - recorded)
    resumed = bulk(str(src), str(out), "--model", str(tiny_model), "--threads-per-worker", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{total - len(recorded)} done, {len(recorded)} skipped" in resumed.stdout  # nothing recorded is redone
    rows = manifest(out)
    assert len(rows) == total and len({r["input"] for r in rows}) == total  # one row per input
    assert {r["status"] for r in rows} == {"done"}
    assert len(list(out.rglob("*.heatmap.png"))) == total and not list(out.rglob("*.tmp"))
