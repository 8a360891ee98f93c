"""Live input (runtime.inputs.live): raw frames on a pipe, an MJPEG stream over HTTP, a file; the
newest frame wins so latency stays bounded; stops and the summary. No camera device exists
on this machine or in CI: ``camera:N`` goes through the same ``CaptureSource`` as the HTTP
stream tested here (OpenCV's VideoCapture), and only its refusal is tested directly."""

from __future__ import annotations

import http.server
import io
import socketserver
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import numpy as np
import pytest

from runtime.inputs.live import (
    FrameSource,
    LatencyStats,
    LiveError,
    RawSink,
    RawSource,
    open_source,
    run_live,
)
from tests.proxy_model import proxy_model  # noqa: F401  (session fixture)

W, H = 640, 480

# Writes N raw bgr24 frames of a photo at FPS to stdout, frame index in the first 4 bytes.
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np, skimage.data, cv2
    n, fps = int(sys.argv[1]), float(sys.argv[2])
    base = cv2.resize(skimage.data.coffee()[:, :, ::-1], (640, 480))
    rng = np.random.default_rng(0)
    frames = [np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(4)]
    out, start = sys.stdout.buffer, time.perf_counter()
    for i in range(n):
        f = frames[i % 4].copy()
        f.reshape(-1)[:4] = np.frombuffer(np.uint32(i).tobytes(), np.uint8)
        time.sleep(max(0.0, start + i / fps - time.perf_counter()))
        out.write(f.tobytes())
    out.flush()
""")

# Reads raw bgr24 frames from stdin until EOF; prints how many and their first-pixel indices.
READER = textwrap.dedent("""
    import sys
    import numpy as np
    size, n, idx = 640 * 480 * 3, 0, []
    while True:
        buf = sys.stdin.buffer.read(size)
        if len(buf) < size:
            break
        n += 1
    print(n, len(buf))
""")


def _index(image: np.ndarray) -> int:
    return int(np.frombuffer(image.reshape(-1)[:4].tobytes(), np.uint32)[0])


def test_pipe_faster_than_inference_drops_stale_frames_and_latency_stays_bounded(proxy_model):  # noqa: F811
    """150 frames at 120 fps into a pipe (the proxy at 640x480 does ~25 fps here): the newest
    frame wins, stale ones are dropped and counted, the latency of the last frames is no
    larger than that of the first ones, and the heatmaps reach the next program whole."""
    from runtime import DepthHeatmapper
    from runtime.depth.steady import SteadyNormalizer

    hm, steady = DepthHeatmapper(proxy_model, threads=2), SteadyNormalizer()
    hm.predict(np.zeros((H, W, 3), np.uint8))  # warm up outside the timed run
    writer = subprocess.Popen([sys.executable, "-c", WRITER, "150", "120"], stdout=subprocess.PIPE)
    reader = subprocess.Popen([sys.executable, "-c", READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    sink, seen, work, lat = RawSink(reader.stdin), [], [], []

    def handle(frame):
        t = time.perf_counter()
        seen.append(_index(frame.image))
        depth = hm.predict(frame.image).depth
        sink.write(steady.update(depth, frame.image).colorize(depth, cv2.COLORMAP_INFERNO))
        work.append(time.perf_counter() - t)
        lat.append(time.perf_counter() - frame.arrived)

    summary = run_live(open_source("-", f"{W}x{H}", stdin=writer.stdout), handle)
    writer.wait(10)
    reader.stdin.close()
    got, trailing = map(int, reader.stdout.read().split())
    reader.wait(10)
    assert summary.stopped == "end of stream" and summary.note == ""
    assert summary.frames_in == 150 and summary.processed + summary.dropped == 150, summary
    assert summary.dropped > 50 and summary.processed == len(seen), summary
    assert seen == sorted(seen) and seen[-1] == 149  # always the newest; the last is never lost
    assert got == summary.processed and trailing == 0  # whole frames downstream
    # No backlog: a frame waits at most for the frame in work when it arrived, then its own work
    # (a queue would add every earlier frame's work instead: ~140 frames' worth by the end).
    for i in range(1, len(lat)):
        assert lat[i] < work[i - 1] + work[i] + 0.05, (i, lat, work)
    assert summary.max_ms / 1e3 < 2 * max(work) + 0.05, (summary, work)


def _mjpeg_server(frames: list[np.ndarray], fps: float):
    """An MJPEG-over-HTTP server (multipart/x-mixed-replace, as IP cameras serve) on 127.0.0.1."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for f in frames:
                jpg = cv2.imencode(".jpg", f)[1].tobytes()
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                                 + jpg + b"\r\n")
                time.sleep(1 / fps)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_mjpeg_stream_over_http():
    levels = [10 * i + 20 for i in range(20)]
    server = _mjpeg_server([np.full((120, 160, 3), v, np.uint8) for v in levels], fps=50)
    try:
        source = open_source(f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg")
        assert source.live
        got = []
        summary = run_live(source, lambda f: got.append(round(float(f.image.mean()))))
    finally:
        server.shutdown()
        server.server_close()
    assert summary.stopped == "end of stream" and summary.frames_in == 20, summary
    assert summary.processed + summary.dropped == 20 and got[-1] == levels[-1]
    assert all(abs(g - min(levels, key=lambda v: abs(v - g))) <= 2 for g in got)  # JPEG: within 2 levels
    assert got == sorted(got)


def test_stream_credentials_never_reach_a_file_name_an_error_or_the_summary():
    from runtime.engine.live import live_name
    from runtime.inputs.live import redact

    url = "rtsp://admin:s3cret@cam.local:554/live/main?token=abc123"
    assert redact(url) == "rtsp://cam.local:554/live/main?..."
    assert live_name(url) == "rtsp_cam.local_554_live_main"
    with socketserver.TCPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as s:
        port = s.server_address[1]  # a port nobody listens on once closed
    with pytest.raises(LiveError) as refused:
        open_source(f"http://admin:s3cret@127.0.0.1:{port}/x.mjpg?token=abc123", open_timeout=2)
    assert "s3cret" not in str(refused.value) and "abc123" not in str(refused.value)
    assert str(refused.value).startswith(f"http://127.0.0.1:{port}/x.mjpg?...: the stream could not be opened")
    server = _mjpeg_server([np.full((120, 160, 3), 90, np.uint8)] * 3, fps=50)
    try:
        source = open_source(f"http://admin:s3cret@127.0.0.1:{server.server_address[1]}/s.mjpg?token=abc123")
        summary = run_live(source, lambda f: None)
    finally:
        server.shutdown()
        server.server_close()
    assert summary.processed >= 1 and "s3cret" not in summary.text() and "abc123" not in summary.text()
    assert summary.source == f"http://127.0.0.1:{server.server_address[1]}/s.mjpg?..."


def test_unreachable_stream_and_missing_camera_are_refused():
    with socketserver.TCPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as s:
        port = s.server_address[1]  # a port nobody listens on once closed
    with pytest.raises(LiveError, match="could not be opened"):
        open_source(f"http://127.0.0.1:{port}/x.mjpg", open_timeout=2)
    with pytest.raises(LiveError, match="no camera"):
        open_source("camera:9")  # no camera device exists here
    with pytest.raises(LiveError, match="camera:N"):
        open_source("camera:front")
    with pytest.raises(LiveError, match="--size"):
        open_source("-")
    with pytest.raises(LiveError, match="WxH"):
        open_source("-", "640")


def test_a_file_is_not_live_every_frame_is_processed(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    for i in range(12):
        writer.write(np.full((120, 160, 3), 20 * i, np.uint8))
    writer.release()
    source = open_source(str(path))
    assert not source.live
    got = []
    summary = run_live(source, lambda f: (time.sleep(0.02), got.append(f.index)))
    assert summary.processed == 12 and summary.dropped == 0 and got == list(range(12)), summary


def _raw(frames: int, extra: int = 0, w: int = 8, h: int = 4) -> io.BytesIO:
    data = b"".join(np.full((h, w, 3), i, np.uint8).tobytes() for i in range(frames))
    return io.BytesIO(data + b"\0" * extra)


def test_stops_on_max_frames_interrupt_closed_output_and_duration():
    summary = run_live(RawSource(_raw(20), 8, 4), lambda f: None, max_frames=5, drop=False)
    assert summary.stopped == "max frames" and summary.processed == 5

    def interrupt(frame):
        if frame.index == 3:
            raise KeyboardInterrupt
    summary = run_live(RawSource(_raw(20), 8, 4), interrupt, drop=False)
    assert summary.stopped == "interrupted" and summary.processed == 3, summary

    r, w = subprocess.os.pipe()
    subprocess.os.close(r)
    with open(w, "wb", buffering=0) as closed:
        sink = RawSink(closed)
        summary = run_live(RawSource(_raw(5), 8, 4), lambda f: sink.write(f.image), drop=False)
    assert summary.stopped == "output closed" and summary.processed == 0

    class Slow(FrameSource):  # a stream that sends a frame every 0.1 s, forever
        name = "slow"

        def read(self):
            time.sleep(0.1)
            return np.zeros((4, 8, 3), np.uint8)
    t = time.perf_counter()
    summary = run_live(Slow(), lambda f: None, duration=0.5)
    assert summary.stopped == "duration" and 2 <= summary.processed <= 6
    assert time.perf_counter() - t < 1.5


def test_a_partial_last_frame_and_a_failing_source_are_reported():
    summary = run_live(RawSource(_raw(2, extra=50), 8, 4), lambda f: None, drop=False)
    assert summary.processed == 2 and summary.stopped == "end of stream"
    assert "50 trailing bytes" in summary.note and "--size" in summary.note

    class Broken(FrameSource):
        name = "broken"

        def read(self):
            raise OSError("device unplugged")
    summary = run_live(Broken(), lambda f: None)
    assert summary.stopped == "error: device unplugged" and not summary.ok


def test_raw_sink_refuses_a_size_change():
    sink = RawSink(io.BytesIO())
    sink.write(np.zeros((4, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="the stream is 8x4"):
        sink.write(np.zeros((4, 9, 3), np.uint8))
    assert sink.stream.getvalue() == bytes(4 * 8 * 3)


def test_latency_percentiles_within_one_percent():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(np.log(0.03), 0.5, 5000)
    stats = LatencyStats()
    for s in samples:
        stats.add(float(s))
    for q in (50, 95):
        assert stats.percentile(q) == pytest.approx(np.percentile(samples, q), rel=0.011)
    assert stats.percentile(100) == pytest.approx(samples.max()) and LatencyStats().percentile(50) == 0.0


CTRL_C = textwrap.dedent("""
    import sys
    from runtime.inputs.live import open_source, run_live
    processed = []
    summary = run_live(open_source("-", "8x4"), lambda f: (processed.append(f.index), print("frame", flush=True)))
    print(summary.text(), flush=True)
""")


def test_ctrl_c_ends_a_live_run_cleanly_with_a_summary():
    """A real SIGINT while the run waits for the next frame of a pipe that stays open."""
    import signal

    proc = subprocess.Popen([sys.executable, "-c", CTRL_C], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=False)
    for i in range(3):
        proc.stdin.write(np.full((4, 8, 3), i, np.uint8).tobytes())
        proc.stdin.flush()
        assert proc.stdout.readline() == b"frame\n"
    time.sleep(0.5)  # the run now waits for a 4th frame
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)  # stdin stays open until it has ended: closing it first could end the run as EOF
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    assert proc.returncode == 0, err.decode()
    assert b"3 frames in, 3 processed, 0 dropped" in out and b"stopped: interrupted" in out, out


def test_reader_iterates_every_frame_of_a_lossless_source_and_only_the_newest_of_a_live_one():
    from runtime.inputs.live import LiveReader

    with LiveReader(RawSource(_raw(30), 8, 4), drop=False) as reader:
        assert [int(f.image[0, 0, 0]) for f in reader.frames()] == list(range(30))
    with LiveReader(RawSource(_raw(30), 8, 4), drop=True) as reader:
        time.sleep(0.3)  # all 30 frames arrive while nobody takes any
        got = [f.index for f in reader.frames()]
    assert got == [29] and reader.dropped == 29 and reader.frames_in == 30
