"""``heatmap`` stopped for real: Ctrl-C (SIGINT) and kill -9 of the process, found by its
own session. What must hold: Ctrl-C does not wait for a long video (it stops at its next
frame and leaves nothing under its names) and journals every input that finished; after
kill -9 at any moment, every output on disk has its row but at most the inputs in flight,
and the rerun redoes only those."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import cv2
import numpy as np

from runtime.engine import read_manifest

from .conftest import REPO
from .test_engine import tiny_model  # noqa: F401 - the one-op model (a session fixture)

GUARD_S = 300


def tiny_jpegs(folder, count: int, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))[1].tobytes()
    for i in range(count):
        (folder / f"{prefix}{i:04d}.jpg").write_bytes(data)


def heatmap(src, out, model, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "midas_onnx", "heatmap", str(src), "-o", str(out), "--model",
                             str(model), "--workers", "2", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_outputs(proc, out, count: int, pattern: str = "*.heatmap.png") -> None:
    deadline = time.monotonic() + GUARD_S
    while len(list(out.glob(pattern))) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_ctrl_c_stops_a_long_video_and_journals_what_finished(tmp_path, tiny_model):  # noqa: F811
    src = tmp_path / "in"
    src.mkdir()
    writer = cv2.VideoWriter(str(src / "a_clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    base = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for i in range(1500):  # seconds of work: still running when Ctrl-C comes
        writer.write(np.roll(base, i, axis=1))
    writer.release()
    tiny_jpegs(src, 400, "b_")
    out = tmp_path / "out"
    proc = heatmap(src, out, tiny_model)
    wait_for_outputs(proc, out, 5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=GUARD_S)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "interrupted: rerun the same command to resume" in stdout
    assert not [p.name for p in out.iterdir() if "clip" in p.name]  # the video stopped: nothing of it left
    rows = read_manifest(str(out))
    written = {p.name.removesuffix(".heatmap.png") for p in out.glob("*.heatmap.png")}
    assert {r["relative"] for r in rows if r["status"] == "done"} == written  # every output has its row
    assert 5 <= len(rows) < 401 and "a_clip.avi" not in {r["relative"] for r in rows}
    resumed = subprocess.run([sys.executable, "-m", "midas_onnx", "heatmap", str(src), "-o", str(out), "--model",
                              str(tiny_model)], cwd=REPO, capture_output=True, text=True, timeout=GUARD_S)
    assert resumed.returncode == 0 and f"{401 - len(rows)} done (1 videos, 1500 frames), {len(rows)} skipped" in \
        resumed.stdout, resumed.stdout


def test_kill_9_at_any_moment_redoes_at_most_the_inputs_in_flight(tmp_path, tiny_model):  # noqa: F811
    src = tmp_path / "in"
    total = 2000
    tiny_jpegs(src, total)
    out = tmp_path / "out"
    proc = heatmap(src, out, tiny_model)
    wait_for_outputs(proc, out, 300)
    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this test started
    proc.wait()
    db = sqlite3.connect(out / ".journal.sqlite")
    recorded = {json.loads(d)["relative"] for (d,) in db.execute("SELECT data FROM rows WHERE status = 'done'")}
    db.close()
    written = {p.name.removesuffix(".heatmap.png") for p in out.glob("*.heatmap.png")}
    assert 300 - 2 * 2 <= len(recorded) < total and recorded <= written  # 300 written, some still in flight
    assert len(written - recorded) <= 2 * 2  # the window in flight: twice the workers
    resumed = subprocess.run([sys.executable, "-m", "midas_onnx", "heatmap", str(src), "-o", str(out), "--model",
                              str(tiny_model)], cwd=REPO, capture_output=True, text=True, timeout=GUARD_S)
    assert resumed.returncode == 0 and f"{total - len(recorded)} done, {len(recorded)} skipped" in resumed.stdout
    assert len(read_manifest(str(out))) == total and not list(out.glob(".*.tmp"))
