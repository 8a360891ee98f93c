"""``/v1/stream`` (serve/stream.py): live frames over a WebSocket against the app served by
uvicorn on 127.0.0.1 (in a thread, so inference can be held still), with the websockets
client: heatmaps that follow the input, newest-wins drops, the connection cap, the message
bound, bad frames, drain, and the access policy (keys, Origin)."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import cv2
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from serve import ServeSettings
from serve.stream import PATH

from .test_serve import free_port
from .test_serve_hardening import HeldInference, wait_until

KEY = "stream-test-key-0123456789"


@contextlib.contextmanager
def stream_app(settings: ServeSettings, wait_ready: bool = True):
    """(ws URL base, Service): ``create_app(settings)``, served by uvicorn on 127.0.0.1 in a
    background thread."""
    import uvicorn

    import serve.app

    app = serve.app.create_app(settings)
    svc = app.state.service
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "server start")
        if wait_ready:
            wait_until(svc.ready, "model load")
        yield f"ws://127.0.0.1:{port}", svc
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def frame(seed: int, size=(160, 120)) -> np.ndarray:
    """A BGR frame: a gradient with a bright square that moves with ``seed``."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = np.linspace(30, 200, w, dtype=np.uint8)[None, :, None]
    x = 10 + (seed * 23) % (w - 50)
    img[20:80, x:x + 40] = (40, 220, 250)
    return img


def jpg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img)[1].tobytes()


def next_heatmap(ws, timeout: float = 60) -> tuple[dict, np.ndarray]:
    meta = json.loads(ws.recv(timeout=timeout))
    assert "error" not in meta, meta
    data = ws.recv(timeout=timeout)
    assert isinstance(data, bytes)
    return meta, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def closed_with(ws, timeout: float = 30) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as caught:
        while True:
            ws.recv(timeout=timeout)
    return caught.value.rcvd.code, caught.value.rcvd.reason


def open_streams(svc) -> float:
    return svc.metrics.stream_connections._value.get()


@pytest.fixture(scope="module")
def settings(fixed_model) -> ServeSettings:
    return ServeSettings(model=fixed_model, workers=1, quiet=True, max_streams_per_client=8)


def test_frames_in_heatmaps_out_following_the_input(settings):
    with stream_app(settings) as (base, svc), connect(base + PATH, max_size=None) as ws:
        seen = []
        for k in range(4):
            ws.send(jpg(frame(k)))
            meta, heat = next_heatmap(ws)
            assert meta["frame"] == k and meta["dropped"] == 0 and meta["latency_ms"] > 0
            assert (meta["width"], meta["height"]) == (160, 120) and heat.shape == (120, 160, 3)
            assert meta["cut"] or k > 0  # the first frame starts the steady reference
            seen.append(heat.astype(np.int16))
        assert all(np.abs(a - b).mean() > 2 for a, b in zip(seen, seen[1:])), "heatmaps must follow the frames"
        ws.send(jpg(frame(3)))  # the same frame again: about the same colours (steady, no drift)
        _, again = next_heatmap(ws)
        assert np.abs(again.astype(np.int16) - seen[3]).mean() < 6
        assert svc.active == 0


def test_newest_frame_wins_while_one_is_in_flight(settings):
    with stream_app(settings) as (base, svc), connect(base + PATH, max_size=None) as ws:
        held = HeldInference(svc)
        ws.send(jpg(frame(0)))
        assert held.entered.acquire(timeout=30)  # frame 0 is in inference, held
        for k in range(1, 10):  # a burst: each replaces the one waiting
            ws.send(jpg(frame(k)))
        time.sleep(0.5)  # all received by the server
        assert svc.batcher.depth() == 0, "waiting frames must not take queue places"
        held.release.set()
        first, _ = next_heatmap(ws)
        newest, _ = next_heatmap(ws)
        assert first["frame"] == 0
        assert newest["frame"] == 9 and newest["dropped"] == 8, newest
        assert held.calls == 2
        metrics = svc.metrics.stream_frames
        assert metrics.labels("dropped_replaced")._value.get() == 8


def test_full_queue_drops_the_frame_instead_of_queueing(settings):
    """With the batcher's queue full, a frame is dropped (counted) and the stream goes on."""
    with stream_app(settings.replace(queue_size=1, max_batch=1)) as (base, svc):
        held = HeldInference(svc)
        with connect(base + PATH) as a, connect(base + PATH) as b, connect(base + PATH) as c:
            a.send(jpg(frame(0)))
            assert held.entered.acquire(timeout=30)  # a's frame in inference: the queue is empty again
            b.send(jpg(frame(1)))
            wait_until(lambda: svc.batcher.depth() == 1, "b's frame queued")
            c.send(jpg(frame(2)))  # no room: dropped
            wait_until(lambda: svc.metrics.stream_frames.labels("dropped_busy")._value.get() == 1,
                       "c's frame dropped")
            held.release.set()
            assert next_heatmap(a)[0]["frame"] == 0 and next_heatmap(b)[0]["frame"] == 0
            c.send(jpg(frame(3)))
            meta, _ = next_heatmap(c)
            assert meta["frame"] == 1 and meta["dropped"] == 1


def test_connection_cap(settings):
    with stream_app(settings.replace(max_streams=2)) as (base, svc):
        with connect(base + PATH) as a, connect(base + PATH) as b:
            with connect(base + PATH) as third:
                code, reason = closed_with(third)
            assert code == 1013 and "too many live streams (at most 2)" in reason
            a.send(jpg(frame(0)))  # the two admitted ones still work
            assert next_heatmap(a)[0]["frame"] == 0
        wait_until(lambda: open_streams(svc) == 0, "the places given back")
        with connect(base + PATH) as again:  # room again once they closed
            again.send(jpg(frame(1)))
            assert next_heatmap(again)[0]["frame"] == 0


def test_idle_connection_is_closed_and_frees_its_place(settings):
    with stream_app(settings.replace(max_streams=1, stream_idle_timeout=0.5)) as (base, svc):
        with connect(base + PATH) as idle:
            assert closed_with(idle) == (1000, "no frame for 0.5 s; closed")
        wait_until(lambda: open_streams(svc) == 0, "the place given back")
        with connect(base + PATH) as ws:
            ws.send(jpg(frame(0)))
            assert next_heatmap(ws)[0]["frame"] == 0


def test_oversize_message_is_refused(settings):
    with stream_app(settings.replace(max_body_mb=50_000 / 2**20)) as (base, svc), \
            connect(base + PATH, max_size=None) as ws:
        noise = np.random.default_rng(0).integers(0, 256, (600, 800, 3), np.uint8)
        big = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        assert len(big) > 50_000
        ws.send(big)
        code, reason = closed_with(ws)
        assert code == 1009 and "at most 50,000" in reason
        assert svc.alive()


def test_garbage_gets_an_error_message_and_the_stream_goes_on(settings):
    with stream_app(settings) as (base, svc), connect(base + PATH, max_size=None) as ws:
        ws.send(b"\x00garbage, not an image" * 10)
        err = json.loads(ws.recv(timeout=30))
        assert err["frame"] == 0 and err["error"]["code"] == "bad_image", err
        ws.send(b"\xff\xd8\xff" + b"\x10" * 100)  # a JPEG cut off
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "bad_image"
        ws.send("a text message")
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "bad_message"
        ws.send(jpg(frame(0)))
        meta, heat = next_heatmap(ws)
        assert meta["frame"] == 2 and heat.shape == (120, 160, 3)
        assert svc.alive()


def test_drain_closes_streams_with_going_away(settings):
    with stream_app(settings) as (base, svc), connect(base + PATH) as ws:
        ws.send(jpg(frame(0)))
        next_heatmap(ws)
        svc.draining = True
        code, reason = closed_with(ws)
        assert code == 1001 and "shutting down" in reason
        with connect(base + PATH) as late:
            assert closed_with(late)[0] == 1001


def test_keys_and_origin(settings):
    import base64

    token = "midas-key." + base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("=")
    with stream_app(settings.replace(api_keys=(KEY,))) as (base, svc):
        with connect(base + PATH) as ws:
            code, reason = closed_with(ws)
            assert code == 4401 and "API key is required" in reason
        with connect(base + PATH + "?key=wrong-key") as ws:
            assert closed_with(ws) == (4401, "the API key is not valid")
        # the browser's way: a subprotocol; the server answers midas-onnx, never the key
        with connect(base + PATH, subprotocols=["midas-onnx", token]) as ws:
            assert ws.subprotocol == "midas-onnx"
            ws.send(jpg(frame(0)))
            assert next_heatmap(ws)[0]["frame"] == 0
        with connect(base + PATH + f"?key={KEY}") as ws:
            ws.send(jpg(frame(0)))
            assert next_heatmap(ws)[0]["frame"] == 0
        with connect(base + PATH, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            ws.send(jpg(frame(0)))
            assert next_heatmap(ws)[0]["frame"] == 0
        # another site's page, even holding a key, is refused in the handshake (no hijacking)
        with pytest.raises(InvalidStatus) as caught:
            connect(base + PATH + f"?key={KEY}", origin="http://evil.example")
        assert caught.value.response.status_code == 403
        assert json.loads(caught.value.response.body)["error"]["code"] == "cross_origin"
        with pytest.raises(InvalidStatus) as caught:  # DNS rebinding: a Host not served here
            connect(base + PATH + f"?key={KEY}", additional_headers={"Host": "evil.example"})
        assert caught.value.response.status_code == 400
        port = base.rsplit(":", 1)[1]
        with connect(base + PATH, origin=f"http://127.0.0.1:{port}", subprotocols=["midas-onnx", token]) as ws:
            ws.send(jpg(frame(0)))  # the page's own origin is welcome
            assert next_heatmap(ws)[0]["frame"] == 0


def test_a_key_guesser_over_websocket_is_slowed(settings):
    """Wrong keys in the handshake count like refused HTTP requests: past the burst the
    client is denied in the handshake (429) until its next token is due; another address
    with the right key is not."""
    slowed = settings.replace(api_keys=(KEY,), refusal_burst=3, refusal_rate=1.0)
    with stream_app(slowed) as (base, svc):
        for i in range(3):
            with connect(base + PATH + f"?key=guess-{i}", source_address=("127.0.0.4", 0)) as ws:
                assert closed_with(ws) == (4401, "the API key is not valid")
        with pytest.raises(InvalidStatus) as denied:
            connect(base + PATH + "?key=guess-3", source_address=("127.0.0.4", 0))
        assert denied.value.response.status_code == 429 and b"too_many_refusals" in denied.value.response.body
        with connect(base + PATH + f"?key={KEY}") as ws:
            ws.send(jpg(frame(0)))
            assert next_heatmap(ws)[0]["frame"] == 0
        time.sleep(1.1)  # one token back
        with connect(base + PATH + "?key=guess-4", source_address=("127.0.0.4", 0)) as ws:
            assert closed_with(ws) == (4401, "the API key is not valid")


# -- issue 32: what one client can do to the stream -------------------------------------------------
def test_no_permessage_deflate(fixed_model):
    """The CLI's server offered permessage-deflate (a 20 MB message could inflate about a
    thousandfold on the event loop; JPEG frames gain nothing from it)."""
    from .test_serve import running_server

    with running_server(fixed_model, "--quiet") as base, \
            connect(base.replace("http://", "ws://") + PATH, compression="deflate") as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        ws.send(jpg(frame(0)))
        assert next_heatmap(ws)[0]["frame"] == 0


def test_one_client_cannot_hold_every_stream(settings):
    with stream_app(settings.replace(max_streams=3, max_streams_per_client=2)) as (base, svc):
        with connect(base + PATH) as a, connect(base + PATH) as b:
            with connect(base + PATH) as third:
                code, reason = closed_with(third)
            assert code == 1013 and "from this client (at most 2)" in reason
            with connect(base + PATH, source_address=("127.0.0.9", 0)) as other:  # another client
                other.send(jpg(frame(0)))
                assert next_heatmap(other)[0]["frame"] == 0
            a.send(jpg(frame(1)))
            assert next_heatmap(a)[0]["frame"] == 0
            assert b.protocol.state.name == "OPEN"


def test_text_messages_do_not_keep_a_stream_open_and_bad_frames_close_it(settings):
    """Any text message reset the idle timer, so one client could hold every place with a
    message a minute; bad frames were answered for ever. Now only frames count as activity,
    each refused message counts against the client, and --max-bad-frames close the stream."""
    with stream_app(settings.replace(stream_idle_timeout=1.0, max_bad_frames=50)) as (base, svc), \
            connect(base + PATH) as ws:
        t = time.perf_counter()
        with pytest.raises(ConnectionClosed) as caught:
            for _ in range(40):
                ws.send("still here")
                ws.recv(timeout=5)  # its bad_message notice
                time.sleep(0.1)
        assert caught.value.rcvd.code == 1000 and "no frame for 1 s" in caught.value.rcvd.reason
        assert time.perf_counter() - t < 4
    with stream_app(settings.replace(max_bad_frames=3, refusal_burst=3, refusal_rate=0.01)) as (base, svc):
        with connect(base + PATH) as ws:
            for k in range(3):
                ws.send(b"\x00not an image" * 10)
                assert json.loads(ws.recv(timeout=30))["error"]["code"] == "bad_image"
            code, reason = closed_with(ws)
        assert code == 1008 and "3 frames or messages refused (at most 3)" in reason
        with pytest.raises(InvalidStatus) as denied:  # counted against the client like refused requests
            connect(base + PATH)
        assert denied.value.response.status_code == 429


def test_a_stream_picks_its_model_and_an_unknown_one_is_refused(settings):
    """``?model=`` on the stream, as on /v1/depth: the named model computes its frames; an
    unknown name closes the handshake with 1003 naming the server's models."""
    one = settings.models[next(iter(settings.models))]
    with stream_app(settings.replace(model=(str(one), f"other={one}"))) as (base, svc):
        with connect(base + PATH + "?model=nope") as ws:
            code, reason = closed_with(ws)
            assert code == 1003 and "'nope'" in reason and "other" in reason, reason
        with connect(base + PATH + "?model=other") as ws:
            ws.send(jpg(frame(0)))
            assert next_heatmap(ws)[0]["frame"] == 0
        assert svc.metrics.model_images.labels("other")._value.get() == 1
        assert svc.metrics.model_images.labels(one.name.removesuffix(".onnx"))._value.get() == 0
