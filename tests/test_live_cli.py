"""``heatmap`` on live input as a user pipes it: raw bgr24 frames in on stdin, heatmap frames
out on stdout and as a video; stale frames dropped and counted. (No camera device exists on
these machines: ``camera:N`` opens through the same OpenCV capture path as stream URLs,
which tests/test_live.py drives with a real MJPEG-over-HTTP server.)"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np

from runtime import DepthHeatmapper

from .conftest import REPO
from .test_engine import tiny_model  # noqa: F401 - the one-op model (a session fixture)


def frames_of(photo: np.ndarray, count: int, size=(160, 120)) -> np.ndarray:
    base = cv2.resize(photo[:, :, ::-1], size)
    return np.stack([np.roll(base, 3 * i, axis=1) for i in range(count)])


def heatmap_live(*args: str, frames: np.ndarray, model) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midas_onnx", "heatmap", "-", "--size", "160x120", "--model",
                           str(model), *args], input=frames.tobytes(), capture_output=True, cwd=REPO, timeout=300)


def test_pipe_in_raw_frames_out(fixed_model, photo_set):
    frames = frames_of(photo_set["astronaut"], 12)
    r = heatmap_live("--stdout", "--normalize", "frame", frames=frames, model=fixed_model)
    assert r.returncode == 0, r.stderr.decode()
    out = np.frombuffer(r.stdout, np.uint8).reshape(-1, 120, 160, 3)
    summary = r.stderr.decode().strip().splitlines()[-1]
    assert summary.startswith("stdin: 12 frames in, ") and "stopped: end of stream" in summary
    processed = int(summary.split(" processed")[0].rsplit(" ", 1)[1])
    dropped = int(summary.split(" dropped")[0].rsplit(" ", 1)[1])
    assert len(out) == processed >= 1 and processed + dropped <= 12
    # each frame out is the heatmap of one frame in (per-frame colours: exactly the runtime's)
    hm = DepthHeatmapper(fixed_model)
    assert any(np.array_equal(out[-1], hm.heatmap(f)) for f in frames)


def test_a_fast_source_drops_stale_frames_and_max_frames_stops(fixed_model, photo_set):
    """A source at ~200 fps, faster than inference: frames are dropped, not queued, and
    --max-frames ends the run while the source still sends."""
    import threading
    import time

    frames = frames_of(photo_set["coffee"], 8)
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "heatmap", "-", "--size", "160x120", "--stdout",
                             "--max-frames", "5", "--model", str(fixed_model)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def send() -> None:
        try:
            for i in range(6000):  # 30 s at most
                proc.stdin.write(frames[i % 8].tobytes())
                proc.stdin.flush()
                time.sleep(0.005)
        except (BrokenPipeError, ValueError):
            pass  # the command stopped reading: what --max-frames does

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    out = proc.stdout.read()  # not communicate(): it would close stdin, ending the stream
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err.decode()
    assert len(out) == 5 * 120 * 160 * 3
    summary = err.decode().strip().splitlines()[-1]
    assert "5 processed" in summary and "stopped: max frames" in summary
    dropped = int(summary.split(" dropped")[0].rsplit(" ", 1)[1])
    assert dropped > 0  # stale frames were dropped, not queued
    p95 = float(summary.split("p95 ")[1].split(" ms")[0])
    assert p95 < 2000  # latency stays about one frame's processing, not the backlog's


def test_live_video_in_the_output_folder_and_errors(fixed_model, photo_set, tmp_path):
    frames = frames_of(photo_set["chelsea"], 8)
    r = heatmap_live("-o", str(tmp_path), frames=frames, model=fixed_model)
    assert r.returncode == 0, r.stderr.decode()
    cap = cv2.VideoCapture(str(tmp_path / "stdin.heatmap.mkv"))
    ok, first = cap.read()
    assert ok and first.shape == (120, 160, 3)
    before = (tmp_path / "stdin.heatmap.mkv").read_bytes()
    again = heatmap_live("-o", str(tmp_path), frames=frames[:2], model=fixed_model)  # an earlier recording is kept
    assert again.returncode == 1 and (tmp_path / "stdin.heatmap.mkv").read_bytes() == before
    assert again.stderr.decode().strip().splitlines()[-1] == (
        f"error: {tmp_path / 'stdin.heatmap.mkv'} exists (an earlier recording); --force overwrites it, "
        "or write to another OUTPUT")
    forced = heatmap_live("-o", str(tmp_path), "--force", frames=frames[:2], model=fixed_model)
    assert forced.returncode == 0 and (tmp_path / "stdin.heatmap.mkv").read_bytes() != before
    nowhere = heatmap_live(frames=frames, model=fixed_model)
    assert nowhere.returncode == 1 and b"error: a live input needs somewhere to go" in nowhere.stderr
    no_size = subprocess.run([sys.executable, "-m", "midas_onnx", "heatmap", "-", "--stdout", "--model",
                              str(fixed_model)], input=b"", capture_output=True, cwd=REPO)
    assert no_size.returncode == 1 and b"need their size: --size WxH" in no_size.stderr
    assert b"Traceback" not in nowhere.stderr + no_size.stderr


def test_a_recording_killed_mid_way_plays_up_to_its_last_seconds(tiny_model, photo_set, tmp_path):
    """kill -9 while recording: what was recorded plays (an MP4 would have no index at all)."""
    import os
    import signal
    import threading
    import time

    frames = frames_of(photo_set["astronaut"], 8)
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "heatmap", "-", "--size", "160x120", "-o",
                             str(tmp_path), "--model", str(tiny_model)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stop = threading.Event()

    def send() -> None:
        i = 0
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            while not stop.is_set():
                proc.stdin.write(frames[i % 8].tobytes())
                i += 1
                time.sleep(0.005)

    import contextlib

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    recording = tmp_path / "stdin.heatmap.mkv"
    deadline = time.monotonic() + 120
    try:
        while not (recording.exists() and playable(recording) >= 30):
            assert proc.poll() is None and time.monotonic() < deadline, "the recording never became playable"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this test started
        stop.set()
        proc.wait()
    assert playable(recording) >= 30


def playable(path) -> int:
    """Frames a player reads from the file as it is now."""
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.isOpened() and cap.read()[0]:
        count += 1
    cap.release()
    return count
