"""Serve under stress, with the app built by its factory and run by a real uvicorn server on
127.0.0.1 in this process, so a test can hold inference still and count decodes: bodies
capped while they arrive, admission before decoding, disconnected clients freed, jobs that
decode once and wait, every load failure visible on /readyz, one colorize per result."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from serve import ServeSettings, create_app

from .test_serve import free_port, jpeg


@contextlib.contextmanager
def live_app(settings: ServeSettings, wait_ready: bool = True):
    """(base URL, Service) of the app served by uvicorn in a background thread."""
    import uvicorn

    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    svc = app.state.service
    try:
        wait_until(lambda: server.started, "server start")
        if wait_ready:
            wait_until(svc.ready, "model load")
        yield base, svc
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class HeldInference:
    """Replaces the batcher's predict_batch so that inference waits until released."""

    def __init__(self, svc) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.calls = 0
        real = svc.batcher._predict_batch

        def held(images):
            self.calls += 1
            self.entered.release()
            assert self.release.wait(60)
            return real(images)

        svc.batcher._predict_batch = held


@pytest.fixture()
def decodes(monkeypatch):
    """Counts decodes by image name."""
    import serve.flow

    counts: dict[str, int] = {}
    real = serve.flow.decode

    def counting(data, name="image", max_pixels=None):
        counts[name] = counts.get(name, 0) + 1
        return real(data, name, max_pixels)

    monkeypatch.setattr(serve.flow, "decode", counting)
    return counts


def post_async(url: str, results: list, **kwargs) -> threading.Thread:
    def go():
        try:
            results.append(httpx.post(url, timeout=60, **kwargs))
        except httpx.HTTPError as exc:  # pragma: no cover - reported by the assertion on results
            results.append(exc)

    t = threading.Thread(target=go)
    t.start()
    return t


def raw_request(base: str, head: bytes, chunks, read_timeout: float = 30.0) -> tuple[int, bytes, int]:
    """Send ``head`` then ``chunks`` on a raw socket, stopping as soon as the server answers.
    Returns (status, response bytes, body bytes sent)."""
    host, port = base.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        response = b""
        for chunk in chunks:
            try:
                response += sock.recv(65536)
            except BlockingIOError:
                pass
            if response:
                break
            try:
                sock.setblocking(True)
                sock.sendall(chunk)
                sent += len(chunk)
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(read_timeout)
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in response or len(response) < response.index(b"\r\n\r\n") + 4 + 10:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
    return int(response.split(b" ", 2)[1]), response, sent


def chunked(parts):
    for part in parts:
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def rss_peak_above_now(measure) -> int:
    """Run ``measure()`` and return how far this process's peak RSS rose above its RSS before."""
    def status(key):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) * 1024

    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    measure()
    return status("VmHWM") - before


@pytest.mark.parametrize("multipart", [True, False])
def test_chunked_body_is_capped_while_it_arrives(fixed_model, multipart):
    """64 MiB with no Content-Length, chunked: 413 as soon as the cap (1 MiB) is passed, the
    sender stopped long before the end, and the server never held much more than the cap."""
    settings = ServeSettings(model=fixed_model, threads=1, max_body_mb=1, quiet=True)
    with live_app(settings) as (base, svc):
        block = b"\x00" * 65536
        if multipart:
            boundary = "----midas"
            ctype = f"multipart/form-data; boundary={boundary}"
            parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
                     f"Content-Type: image/jpeg\r\n\r\n".encode()] + [block] * 1024 + [f"\r\n--{boundary}--\r\n".encode()]
        else:
            ctype = "image/jpeg"
            parts = [block] * 1024
        head = (f"POST /v1/depth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        result = {}

        def send():
            result["status"], result["response"], result["sent"] = raw_request(base, head, chunked(parts))

        grew = rss_peak_above_now(send)
        assert result["status"] == 413, result["response"][:300]
        assert b"body_too_large" in result["response"]
        assert result["sent"] < 16 * 1024 * 1024  # refused while arriving, not after 64 MiB
        assert grew < 24 * 1024 * 1024, grew  # before the fix: +82 MB for this multipart upload
        # and the service is fine afterwards
        ok = httpx.post(base + "/v1/depth", content=jpeg(np.full((40, 60, 3), 90, np.uint8)),
                        headers={"content-type": "image/jpeg"}, timeout=60)
        assert ok.status_code == 200


@contextlib.contextmanager
def one_held_in_inference(model, photo, name: str):
    """A server with room for one waiting image, and a first request ``name`` held inside
    inference until ``held.release`` is set: yields (base, svc, held, first's responses)."""
    settings = ServeSettings(model=model, threads=1, workers=1, queue_size=1, max_batch=1, quiet=True)
    with live_app(settings) as (base, svc):
        held = HeldInference(svc)
        first: list = []
        thread = post_async(base + "/v1/depth", first, files={"file": (name, jpeg(photo), "image/jpeg")})
        assert held.entered.acquire(timeout=30)
        try:
            yield base, svc, held, first
        finally:
            held.release.set()
            thread.join(60)


def test_a_refused_request_costs_no_decode(fixed_model, photo_set, decodes):
    with one_held_in_inference(fixed_model, photo_set["coffee"], "first.jpg") as (base, svc, held, first):
        url = base + "/v1/depth"
        second = []
        t2 = post_async(url, second, files={"file": ("second.jpg", jpeg(photo_set["chelsea"]), "image/jpeg")})
        wait_until(lambda: svc.batcher.depth() == 1 and decodes.get("second.jpg") == 1, "second queued")

        # the queue is full: the third is refused at once, and never decoded
        third = httpx.post(url, files={"file": ("third.jpg", jpeg(photo_set["astronaut"]), "image/jpeg")}, timeout=30)
        assert third.status_code == 503 and third.headers["retry-after"] == "1"
        assert "third.jpg" not in decodes

        held.release.set()
        t2.join(60)
        wait_until(lambda: first, "first answered")
        assert first[0].status_code == 200 and second[0].status_code == 200
        wait_until(lambda: svc.batcher.depth() == 0, "queue drained")
        assert decodes == {"first.jpg": 1, "second.jpg": 1}


def test_disconnect_while_queued_frees_the_place(fixed_model, photo_set, decodes):
    with one_held_in_inference(fixed_model, photo_set["coffee"], "first.jpg") as (base, svc, held, first):
        body = jpeg(photo_set["rocket"])
        host, port = base.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"POST /v1/depth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: svc.batcher.depth() == 1 and decodes.get("upload") == 1, "queued")
        sock.close()  # the client goes away while its image waits
        wait_until(lambda: svc.batcher.depth() == 0, "place given back", timeout=5)  # the timeout is 30 s
        third = []
        t3 = post_async(base + "/v1/depth", third, files={"file": ("third.jpg", jpeg(photo_set["chelsea"]), "image/jpeg")})
        wait_until(lambda: svc.batcher.depth() == 1 and decodes.get("third.jpg") == 1, "third admitted")
        held.release.set()
        t3.join(60)
        wait_until(lambda: first, "first answered")
        assert first[0].status_code == 200 and third[0].status_code == 200
        assert held.calls == 2  # the gone client's image never reached inference


def test_jobs_decode_each_image_once_and_wait_for_room(fixed_model, photo_set, decodes):
    with one_held_in_inference(fixed_model, photo_set["coffee"], "blocker.jpg") as (base, svc, held, _):
        files = [("file", (f"{n}.jpg", jpeg(photo_set[n]), "image/jpeg")) for n in ("astronaut", "chelsea", "rocket")]
        job = httpx.post(base + "/v1/jobs", files=files, timeout=30).json()
        wait_until(lambda: svc.batcher.depth() == 1, "first job image queued")
        time.sleep(0.3)  # while held, a polling job would decode again and again; this one waits
        assert decodes.get("chelsea.jpg", 0) == 0 and decodes["astronaut.jpg"] == 1
        held.release.set()
        wait_until(lambda: httpx.get(base + job["url"]).json()["status"] == "done", "job done")
        view = httpx.get(base + job["url"]).json()
        assert [r["name"] for r in view["results"]] == ["astronaut.jpg", "chelsea.jpg", "rocket.jpg"]
        assert all("heatmap_png_base64" in r for r in view["results"])  # none failed as "busy"
        assert decodes == {"blocker.jpg": 1, "astronaut.jpg": 1, "chelsea.jpg": 1, "rocket.jpg": 1}


def failing_model(path: Path) -> Path:
    """A valid ONNX file with midas-onnx metadata whose first run fails inside onnxruntime."""
    import onnx
    from onnx import TensorProto, helper

    from runtime.model.metadata import ModelInfo, set_metadata

    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [7])
    graph = helper.make_graph([helper.make_node("Reshape", ["image", "shape"], ["depth"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("depth", TensorProto.FLOAT, None)], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, ModelInfo(input_hw=None).to_props())
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case", ["warm-up fails in onnxruntime", "unknown colormap"])
def test_every_load_failure_ends_as_readyz_503_with_the_reason(tmp_path, fixed_model, case, caplog):
    if case == "unknown colormap":
        settings = ServeSettings(model=fixed_model, colormap="rainbowz", quiet=True)
        reason = "unknown colormap 'rainbowz'"
    else:
        settings = ServeSettings(model=failing_model(tmp_path / "fails.onnx"), quiet=True)
        reason = "Reshape"
    with caplog.at_level("ERROR", logger="midas_onnx.serve"), live_app(settings, wait_ready=False) as (base, svc):
        wait_until(svc.loaded.is_set, "load attempt")
        ready = httpx.get(base + "/readyz")
        assert ready.status_code == 503 and reason in ready.json()["error"]["message"]
        r = httpx.post(base + "/v1/depth", content=b"x", headers={"content-type": "image/jpeg"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed"
    assert len([rec for rec in caplog.records if "model failed to load" in rec.getMessage()]) == 1


def test_each_result_is_colorized_once(fixed_model, photo_set, monkeypatch):
    import runtime.outputs.postprocess as postprocess

    calls = []
    real = postprocess.colorize
    monkeypatch.setattr(postprocess, "colorize", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    with live_app(ServeSettings(model=fixed_model, threads=1, quiet=True)) as (base, svc):
        calls.clear()  # the warm-up run
        data = jpeg(photo_set["coffee"])
        r = httpx.post(base + "/v1/depth", content=data, headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200 and calls == []  # an indexed PNG straight from the levels
        calls.clear()
        r = httpx.post(base + "/v1/depth?colormap=turbo&overlay=true", content=data,
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200 and calls == [cv2.COLORMAP_TURBO]
        calls.clear()
        r = httpx.post(base + "/v1/depth?format=json&colormap=turbo&overlay=true", content=data,
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200 and calls == [cv2.COLORMAP_TURBO]  # heatmap and overlay share it
        calls.clear()
        r = httpx.post(base + "/v1/depth?format=depth16", content=data, headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200 and calls == []


def test_depth_files_and_known_depths_over_http(fixed_model, photo_set, tmp_path):
    from runtime import DepthHeatmapper
    from runtime.outputs.depth_files import read_pfm

    data = jpeg(photo_set["coffee"])
    rel = DepthHeatmapper(fixed_model).predict(data).depth
    with live_app(ServeSettings(model=fixed_model, threads=1, quiet=True)) as (base, svc):
        post = lambda query: httpx.post(base + "/v1/depth" + query, content=data,  # noqa: E731
                                        headers={"content-type": "image/jpeg"}, timeout=60)
        npy = post("?format=npy")
        assert npy.status_code == 200 and npy.headers["content-type"] == "application/x-npy"
        import io

        np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), rel)
        pfm = post("?format=pfm")
        assert pfm.headers["content-type"] == "image/x-portable-floatmap"
        (tmp_path / "d.pfm").write_bytes(pfm.content)
        np.testing.assert_array_equal(read_pfm(tmp_path / "d.pfm")[0], rel)
        # known points in metres (made with scale 0.5, shift 0.4 in inverse depth) -> a fit and metres
        points = [[x, y, 1 / (0.5 * float(rel[y, x]) + 0.4)] for x, y in [(50, 40), (300, 200), (550, 350), (100, 300)]]
        import json

        j = post("?format=json&known_depths=" + json.dumps(points))
        assert j.status_code == 200, j.text
        body = j.json()
        assert body["alignment"]["scale"] == pytest.approx(0.5, rel=1e-3) and len(body["alignment"]["points_used"]) == 4
        assert body["metric_depth_m"]["min"] > 0
        metres = np.load(io.BytesIO(post("?format=npy&known_depths=" + json.dumps(points)).content))
        valid = np.isfinite(metres)
        np.testing.assert_allclose(1 / metres[valid], (0.5 * rel + 0.4)[valid], rtol=1e-3, atol=1e-5)
        bad = post("?format=npy&known_depths=" + json.dumps(points[:2]))
        assert bad.status_code == 422 and "at least 3 known points" in bad.json()["error"]["message"]
        assert post("?format=depth16&known_depths=" + json.dumps(points)).status_code == 422
        if not cv2.haveImageWriter(".exr"):
            exr = post("?format=exr")
            assert exr.status_code == 422 and "OPENCV_IO_ENABLE_OPENEXR=1" in exr.json()["error"]["message"]
