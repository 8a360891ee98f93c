"""Fast tests of serve's parts (milliseconds each): access checks, the token buckets, the
budget and its charges, the batcher's cancellation, query parsing and the error envelope,
through an ASGI transport over ``create_app`` with a stub model, so edge cases are cheap to
add. What needs a socket or a process (memory, signals, logs, slow clients) is tested
against real servers in the other tests/test_serve_*.py files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import httpx
import numpy as np
import pytest
from starlette.datastructures import Headers

from runtime.inputs import images
from runtime.heatmapper import DepthResult
from runtime.model.model_description import MIDAS_SMALL
from serve import ServeSettings, create_app
from serve.access import AccessPolicy, key_bits
from serve.batcher import Batcher, QueueFull
from serve.budget import Budget, Charge, in_thread
from serve.buckets import MAX_NAMES, Buckets
from serve.errors import ApiError
from serve.refusals import RefusalThrottle, client_of
from serve.settings import SettingsError
from serve.render import choose_format, parse_points

KEY = "units-key-Vb8Kq2Zt5Wn9Xc3Lm7Pd"
pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend():
    return "asyncio"


def settings(**given) -> ServeSettings:
    return ServeSettings(**({"model": "stub.onnx", "workers": 1, "max_wait_ms": 0.0} | given), quiet=True,
                         key_id_secret="s3cret")


class StubModel:
    """Depth is the image's grey level: instant, deterministic, no ONNX."""

    info = SimpleNamespace(precision="stub", input_size_text="any", description=MIDAS_SMALL)

    def __init__(self) -> None:
        self.calls = 0

    def predict_batch(self, batch):
        self.calls += 1
        out = []
        for pixels in batch:
            loaded = images.load(pixels)
            grey = loaded.pixels.mean(axis=2) if loaded.pixels.ndim == 3 else loaded.pixels
            out.append(DepthResult(grey.astype(np.float32), loaded))
        return out


@contextlib.asynccontextmanager
async def stub_app(client: str = "127.0.0.1", **given):
    """(httpx client over the app through an ASGI transport, Service) with a stub model."""
    app = create_app(settings(**given))
    svc = app.state.service
    for model in svc.models:  # each its own stub and workers, as each its own session
        model.hm = StubModel()
        svc.serve_model(model)
    transport = httpx.ASGITransport(app=app, client=(client, 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield http, svc
    finally:
        await svc.stop()


def png(h: int = 24, w: int = 32) -> bytes:
    return cv2.imencode(".png", np.full((h, w, 3), 120, np.uint8))[1].tobytes()


PNG = {"content-type": "image/png"}


# -- the request flow through the app ------------------------------------------------------------
async def test_an_image_through_the_flow_and_every_budget_given_back():
    async with stub_app() as (http, svc):
        r = await http.post("/v1/depth?format=npy", content=png(), headers=PNG)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
        assert svc.flow.budget.held == 0 and svc.batcher.places.held == 0 and svc.uploads.held == 0


@pytest.mark.parametrize("query, code", [("format=gif", "bad_format"), ("alpha=2", "bad_alpha"),
                                         ("overlay=maybe", "bad_overlay"), ("colormap=nope", "bad_colormap"),
                                         ("format=png&known_depths=[[1,2,3],[3,4,5],[5,6,7]]", "bad_format"),
                                         ("format=json&known_depths=" + "[" * 5 + "]" * 5, "bad_known_depths")])
async def test_bad_queries_are_one_envelope_each(query, code):
    async with stub_app() as (http, svc):
        r = await http.post(f"/v1/depth?{query}", content=png(), headers=PNG)
        assert r.status_code == 422 and r.json() == {"error": {"status": 422, "code": code,
                                                               "message": r.json()["error"]["message"]}}
        assert svc.hm.calls == 0  # refused before any work


@pytest.mark.parametrize("method, path, status, code", [("GET", "/nope", 404, "not_found"),
                                                         ("GET", "/v1/depth", 405, "method_not_allowed"),
                                                         ("GET", "/v1/jobs/none", 404, "no_such_job")])
async def test_every_error_is_the_envelope(method, path, status, code):
    async with stub_app() as (http, svc):
        r = await http.request(method, path)
        assert r.status_code == status and r.json()["error"]["code"] == code
        assert r.headers["content-type"] == "application/json"


async def test_a_request_that_does_not_fit_the_work_budget_is_503_and_costs_nothing():
    async with stub_app(max_pixels=1000, max_body_mb=0.01, max_work_mb=0.05) as (http, svc):
        svc.flow.budget.try_take(svc.flow.budget.limit - 1000)  # held by others
        r = await http.post("/v1/depth", content=png(), headers=PNG)
        assert r.status_code == 503 and r.json()["error"]["code"] == "busy" and r.headers["retry-after"] == "1"
        assert svc.hm.calls == 0


# -- access checks ---------------------------------------------------------------------------------
def policy(**given) -> AccessPolicy:
    return AccessPolicy(settings(**given), metrics=None)


def headers(**values) -> Headers:
    return Headers(raw=[(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()])


def test_hosts_probes_and_the_bind_address():
    p = policy(host="10.1.2.3", allowed_hosts=("depth.example",))
    assert p.check_host("/v1/depth", headers(host="localhost:8000")) is None
    assert p.check_host("/v1/depth", headers(host="depth.example")) is None
    assert p.check_host("/v1/depth", headers(host="10.1.2.3:8000")) is None  # the bind address, added
    assert p.check_host("/v1/depth", headers(host="evil.example")).code == "bad_host"
    assert p.check_host("/healthz", headers(host="10.9.9.9:8000")) is None  # probes: the pod's address
    assert p.check_host("/readyz", headers(host="10.9.9.9:8000")) is None
    two = Headers(raw=[(b"host", b"localhost"), (b"host", b"evil.example")])
    assert p.check_host("/v1/depth", two).code == "bad_host"


def test_origins():
    p = policy(cors_origins=("https://app.example",))
    assert p.check_origin("http", headers(host="127.0.0.1:8000", origin="http://127.0.0.1:8000")) is None
    assert p.check_origin("http", headers(host="x", origin="https://app.example", sec_fetch_site="cross-site")) is None
    assert p.check_origin("http", headers(host="x", origin="https://evil.example")).code == "cross_origin"
    assert p.check_origin("http", headers(host="x", sec_fetch_site="cross-site")).code == "cross_origin"
    assert p.check_origin("http", headers(host="x", sec_fetch_site="cross-site", sec_fetch_mode="navigate")) is None


def test_keys_ids_and_open_paths():
    p = policy(api_keys=(KEY,))
    kid, refusal = p.authenticate("/v1/depth", KEY, ("127.0.0.1", 8000))
    assert refusal is None and kid == p.key_id(KEY) != hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert policy(api_keys=(KEY,)).key_id(KEY) == kid  # the same secret, the same id
    assert AccessPolicy(ServeSettings(model="m", api_keys=(KEY,)), None).key_id(KEY) != kid  # another secret
    assert p.authenticate("/v1/depth", None, None)[1].status == 401
    assert 'error="invalid_token"' in p.authenticate("/v1/depth", KEY + "x", None)[1].headers["WWW-Authenticate"]
    assert p.authenticate("/healthz", None, None) == (None, None)
    assert p.authenticate("/metrics", None, None)[1].status == 401
    assert policy(public_metrics=True, api_keys=(KEY,)).authenticate("/metrics", None, None) == (None, None)
    open_server = policy()
    assert open_server.authenticate("/v1/depth", None, ("10.0.0.5", 8000))[1].code == "keys_required"
    assert open_server.authenticate("/v1/depth", None, ("127.0.0.1", 8000)) == (None, None)


@pytest.mark.parametrize("weak", ["password", "0123456789abcdef0123456789abcde", "short-key-123456789"])
def test_keys_under_128_bits_are_refused_by_place_never_shown(weak, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# comment\n{KEY}\n{weak}\n")
    with pytest.raises(ValueError, match="the API key at keys.txt line 3 is too weak") as caught:
        policy(api_key_file=keys)
    assert weak not in str(caught.value)
    with pytest.raises(ValueError, match="MIDAS_ONNX_API_KEYS item 2 is too weak"):
        policy(api_keys=(KEY, weak))
    assert key_bits("0123456789abcdef0123456789abcdef") == 128 and key_bits(KEY) > 128


def test_a_weak_key_in_a_reloaded_file_keeps_the_keys_in_force(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    p = policy(api_key_file=keys)
    keys.write_text("weak\n")
    p.reload()
    assert p.match(KEY) is not None


async def test_metrics_401s_count_against_the_client_and_probes_never_do():
    """A key guesser on /metrics was never slowed: /metrics was never throttled."""
    async with stub_app(api_keys=(KEY,), refusal_burst=2, refusal_rate=4) as (http, svc):
        codes = [(await http.get("/metrics", headers={"authorization": f"Bearer guess{i}"})).status_code
                 for i in range(3)]
        assert codes == [401, 401, 429]
        assert (await http.get("/healthz")).status_code == 200  # never slowed


async def test_public_paths_are_not_throttled():
    async with stub_app(api_keys=(KEY,), public_metrics=True, refusal_burst=1, refusal_rate=0.001) as (http, svc):
        assert (await http.get("/v1/jobs/x")).status_code == 401  # spends the client's one token
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


async def test_cors_for_an_allowed_origin_on_refusals_too():
    async with stub_app(api_keys=(KEY,), cors_origins=("https://app.example",)) as (http, svc):
        pre = await http.options("/v1/depth", headers={"origin": "https://app.example",
                                                       "access-control-request-method": "POST",
                                                       "access-control-request-headers": "authorization"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        refused = await http.post("/v1/depth", headers={"origin": "https://app.example"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"
        assert "WWW-Authenticate" in refused.headers["access-control-expose-headers"]
        evil = await http.options("/v1/depth", headers={"origin": "https://evil.example",
                                                        "access-control-request-method": "POST"})
        assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers


async def test_per_key_rate_and_concurrency():
    async with stub_app(api_keys=(KEY,), key_rate=0.001, key_burst=2) as (http, svc):
        auth = {"authorization": f"Bearer {KEY}"}
        codes = [(await http.get("/v1/jobs/x", headers=auth)).status_code for _ in range(3)]
        assert codes == [404, 404, 429]
    p = policy(api_keys=(KEY,), key_concurrency=1)
    assert p.admit_key("k") is None
    assert p.admit_key("k").code == "rate_limited"
    p.release_key("k")
    assert p.admit_key("k") is None


# -- token buckets -------------------------------------------------------------------------------
def test_a_bucket_refills_at_its_rate():
    now = [0.0]
    buckets = Buckets(rate=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        buckets.spend("c")
    assert buckets.due(buckets.get("c")) == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.due(buckets.get("c")) == 0.0
    assert buckets.due(buckets.get("c"), reserved=1) == pytest.approx(0.5)


def test_refusal_buckets_are_bounded():
    """An attacker with many addresses cannot grow the table past MAX_NAMES; clients whose
    bucket refilled are forgotten before those still slowed."""
    now = [0.0]
    throttle = RefusalThrottle(rate=0.1, burst=2, clock=lambda: now[0])
    for _ in range(3):
        throttle.refused("slowed")
    assert throttle.wait("slowed") == pytest.approx(10.0)
    for i in range(MAX_NAMES + MAX_NAMES // 10):
        throttle.refused(f"10.0.{i // 256}.{i % 256}")
        now[0] += 1e-4
    assert throttle.clients() <= MAX_NAMES
    assert throttle.wait("slowed") > 0  # owes most: kept


def test_an_ipv6_client_is_its_64():
    one = client_of({"client": ("2001:db8:0:7::1", 1)})
    assert one == client_of({"client": ("2001:db8:0:7:ffff::9", 2)}) == "2001:db8:0:7::/64"
    assert one != client_of({"client": ("2001:db8:0:8::1", 1)})
    assert client_of({"client": ("192.0.2.7", 1)}) == "192.0.2.7"


# -- budget, charges, gates ---------------------------------------------------------------------
async def test_budget_waiters_are_served_in_order_and_nobody_jumps_them():
    budget = Budget(10)
    assert budget.try_take(8)
    order = []

    async def take(name, amount):
        await budget.take(amount)
        order.append(name)

    big, small = asyncio.ensure_future(take("big", 6)), asyncio.ensure_future(take("small", 1))
    await asyncio.sleep(0)
    assert not budget.try_take(1)  # someone waits: no jumping
    budget.give(8)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and budget.held == 7


async def test_a_cancelled_waiter_takes_nothing():
    budget = Budget(1)
    budget.try_take(1)
    waiter = asyncio.ensure_future(budget.take(1))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.give(1)
    assert budget.held == 0 and budget.try_take(1)


async def test_a_charge_comes_back_when_its_thread_ends_not_when_its_caller_leaves():
    """A request cancelled while its thread ran gave its bytes back at once, while the
    thread still held the pixels."""
    from concurrent.futures import ThreadPoolExecutor

    budget, go = Budget(100), threading.Event()
    budget.try_take(60)
    charge = Charge(budget, 60)
    with ThreadPoolExecutor(1) as pool:
        task = asyncio.ensure_future(in_thread(pool, go.wait, 10, charges=(charge,)))
        await asyncio.sleep(0.05)
        task.cancel()
        charge.release()  # the owner has let go
        await asyncio.sleep(0.05)
        assert budget.held == 60  # the thread still runs
        go.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if budget.held == 0:
                break
        assert budget.held == 0
    charge = Charge(budget, 50)
    budget.try_take(50)
    charge.shrink(20)
    assert budget.held == 20
    charge.release()
    assert budget.held == 0


async def test_upload_slots_refuse_beyond_the_gate():
    async with stub_app(max_uploads=1) as (http, svc):
        svc.uploads.try_take()  # one body arriving elsewhere
        r = await http.post("/v1/depth", content=png(), headers=PNG)
        assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_uploads"


# -- the batcher's cancellation ------------------------------------------------------------------
async def test_a_caller_cancelled_while_queued_leaves_the_queue_at_once():
    entered, go = threading.Event(), threading.Event()
    batcher = Batcher(lambda batch: (entered.set(), go.wait(10), [b * 2 for b in batch])[-1], 1, 0.0, 2)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.run(lambda: 1))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.run(lambda: 2))
        while batcher.depth() == 0 or len(batcher._waiting) == 0:
            await asyncio.sleep(0.01)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert batcher.depth() == 0 and len(batcher._waiting) == 0
        go.set()
        assert await first == 2
    finally:
        go.set()
        await batcher.stop()


async def test_a_caller_cancelled_while_decoding_keeps_its_place_until_the_decode_ends():
    decoding, done = threading.Event(), threading.Event()
    batcher = Batcher(lambda batch: batch, 1, 0.0, 1)
    batcher.start()
    work = Budget(10)
    work.try_take(5)
    charge = Charge(work, 5)
    try:
        def slow_decode():
            decoding.set()
            assert done.wait(10)
            return 0

        task = asyncio.ensure_future(batcher.run(slow_decode, charge))
        while not decoding.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        charge.release()
        with pytest.raises(asyncio.CancelledError):
            await task  # its own clean-up has run
        assert batcher.depth() == 1 and work.held == 5  # the decode thread still holds the pixels
        with pytest.raises(QueueFull):  # its place is still taken
            await batcher.run(lambda: 0)
        done.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if batcher.depth() == 0 and work.held == 0:
                break
        assert batcher.depth() == 0 and work.held == 0
    finally:
        done.set()
        await batcher.stop()


# -- jobs --------------------------------------------------------------------------------------
async def test_a_job_whose_store_cannot_mark_it_running_still_finishes():
    """A failure setting a job running left it queued for ever, its lease renewed."""
    from serve.jobs import Jobs, JobStore

    store = JobStore(60, 8, 10**8, 8)

    async def call(method, *args):
        if method == "start":
            raise ConnectionError("the store is away for a moment")
        return getattr(store, method)(*args)

    async with stub_app() as (http, svc):
        svc.jobs = Jobs(call)
        created = await http.post("/v1/jobs", content=png(), headers=PNG)
        assert created.status_code == 202
        url = created.json()["url"]
        for _ in range(200):
            if (view := (await http.get(url)).json())["status"] == "done":
                break
            await asyncio.sleep(0.01)
        assert view["status"] == "done" and "heatmap_png_base64" in view["results"][0]
        assert svc.jobs.running() == 0  # no lease left to renew


async def test_a_slow_job_store_never_blocks_the_event_loop():
    """Under --ray every store call was a blocking ray.get on the event loop (the /metrics
    gauges too): a slow store stalled every request. Calls are awaited now."""
    from serve.jobs import Jobs, JobStore

    store = JobStore(60, 8, 10**8, 8)

    async def slow(method, *args):
        await asyncio.sleep(0.5)
        return getattr(store, method)(*args)

    async with stub_app() as (http, svc):
        svc.jobs = Jobs(slow)
        metrics = asyncio.ensure_future(http.get("/metrics"))
        await asyncio.sleep(0.05)
        t = asyncio.get_running_loop().time()
        assert (await http.get("/healthz")).status_code == 200
        assert asyncio.get_running_loop().time() - t < 0.3  # not behind the store's half second
        assert (await metrics).status_code == 200


# -- the stream's one sender ---------------------------------------------------------------------
class StalledSocket:
    """A WebSocket whose client reads nothing: every send (a close included) waits for ever."""

    def __init__(self, messages: list[dict]) -> None:
        from starlette.websockets import WebSocketState

        self.application_state = self.client_state = WebSocketState.CONNECTED
        self.inbox: asyncio.Queue = asyncio.Queue()
        for message in messages:
            self.inbox.put_nowait(message)

    async def receive(self) -> dict:
        return await self.inbox.get()

    async def _stalled(self, *args) -> None:
        await asyncio.Event().wait()

    send_text = send_bytes = close = _stalled


async def test_a_stream_whose_client_does_not_read_ends_and_its_receiver_never_stalls():
    """The receiving loop sent its error notices itself, and nothing bounded a send: a client
    that did not read stalled the connection for ever. Now one task sends, each message
    within --send-timeout, and the receiver keeps draining what arrives."""
    from serve.stream import _Stream

    async with stub_app(send_timeout=0.2, max_bad_frames=100) as (http, svc):
        policy = AccessPolicy(svc.settings, svc.metrics)
        ws = StalledSocket([{"type": "websocket.receive", "bytes": png()}] +
                           [{"type": "websocket.receive", "text": "hello"}] * 5)
        async with asyncio.timeout(10):  # the send timeout, then the close given up on
            await _Stream(svc, ws, policy, "127.0.0.1", cv2.COLORMAP_INFERNO, svc.models.default).run()
        assert ws.inbox.empty()  # every message received while the sender was stuck
        assert svc.active == 0 and svc.flow.budget.held == 0 and svc.batcher.places.held == 0


# -- query parsing -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("[" * 10 + "]" * 10, "nested deeper"),
    ("[[1,2," + "9" * 40 + "]]", "number characters in a row"),
    ("[[1,2,1e999]]", "out of range"),
    ("[[1,2,NaN]]", "NaN is not a number"),
    ('{"x": 1}', "must be a JSON list"),
    ("[[1,2]]", r"must be \(x, y, depth_m\)"),
    ("[[1,2,3],[1,2,3],[1,2,3],[1,2,3]]", "at most 3 per request"),
])
def test_known_depths_text_is_bounded_before_it_is_parsed(text, message):
    with pytest.raises(ApiError, match=message) as caught:
        parse_points(text, "json", max_points=3)
    assert caught.value.status == 422 and caught.value.code == "bad_known_depths"


def test_format_from_accept():
    assert choose_format(None, "application/json") == "json"
    assert choose_format(None, "application/json, image/png") == "png"
    assert choose_format("npy", "application/json") == "npy"



# -- several models ---------------------------------------------------------------------------------
TWO = {"model": ("near=a.onnx", "far=b.onnx")}


async def test_a_request_picks_its_model_by_query_or_form_field_default_the_first():
    async with stub_app(**TWO) as (http, svc):
        near, far = (svc.models.by_name[n].hm for n in ("near", "far"))
        picked = []
        for query, form in (("", None), ("&model=far", None), ("", {"model": "far"}), ("&model=near", None)):
            if form is None:
                r = await http.post("/v1/depth?format=json" + query, content=png(), headers=PNG)
            else:
                r = await http.post("/v1/depth?format=json", files={"file": ("a.png", png(), "image/png")}, data=form)
            assert r.status_code == 200, r.text
            picked.append(r.json()["model"]["name"])
        assert picked == ["near", "far", "far", "near"]
        assert (near.calls, far.calls) == (2, 2)  # each model its own session
        r = await http.post("/v1/jobs?model=far", content=png(), headers=PNG)
        assert r.status_code == 202
        for _ in range(200):
            job = (await http.get(r.json()["url"])).json()
            if job["status"] == "done":
                break
            await asyncio.sleep(0.02)
        assert job["results"][0]["model"]["name"] == "far" and far.calls == 3


@pytest.mark.parametrize("where", ["query", "form", "job"])
async def test_an_unknown_model_is_one_envelope_naming_the_choices(where):
    async with stub_app(**TWO) as (http, svc):
        if where == "query":
            r = await http.post("/v1/depth?model=nope", content=png(), headers=PNG)
        elif where == "form":
            r = await http.post("/v1/depth", files={"file": ("a.png", png(), "image/png")}, data={"model": "nope"})
        else:
            r = await http.post("/v1/jobs?model=nope", content=png(), headers=PNG)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "bad_model" and "'nope'" in error["message"] and "near, far" in error["message"]
        assert sum(m.hm.calls for m in svc.models) == 0 and svc.flow.budget.held == 0


async def test_every_model_shares_the_one_budget_and_has_the_same_limits():
    async with stub_app(**TWO, queue_size=3) as (http, svc):
        assert [m.batcher.places.limit for m in svc.models] == [3, 3]
        held = svc.flow.budget.limit - 1000  # all but a little, as if another request held it
        assert svc.flow.budget.try_take(held)
        for name in ("near", "far"):
            r = await http.post(f"/v1/depth?model={name}", content=png(), headers=PNG)
            assert r.status_code == 503 and r.json()["error"]["code"] == "busy", (name, r.text)
        svc.flow.budget.give(held)


async def test_readyz_and_metrics_list_each_model():
    async with stub_app(**TWO) as (http, svc):
        await http.post("/v1/depth?model=far", content=png(), headers=PNG)
        ready = (await http.get("/readyz")).json()
        assert [m["name"] for m in ready["models"]] == ["near", "far"] and ready["default_model"] == "near"
        assert {m["file"] for m in ready["models"]} == {"a.onnx", "b.onnx"}
        assert all(m["id"] == MIDAS_SMALL.id and m["precision"] == "stub" for m in ready["models"])
        text = (await http.get("/metrics")).text
        assert 'midas_model_images_total{model="far"} 1.0' in text
        assert 'midas_model_info{' in text and 'model="near"' in text and 'model="far"' in text


def test_model_names_are_checked_in_the_settings():
    assert settings(model=("x/midas_small.int8.onnx",)).models == {"midas_small.int8": Path("x/midas_small.int8.onnx")}
    assert list(settings(model="a=x.onnx,b=y.onnx").models) == ["a", "b"]  # the environment's form
    for bad, says in ((("a=x.onnx", "a=y.onnx"), "two models named 'a'"), (("b d=x.onnx",), "model name 'b d'")):
        with pytest.raises(SettingsError) as caught:
            ServeSettings.load(model=bad)
        assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_metric_models_stream_colours_are_its_fixed_metres_in_every_frame():
    """The stream colours a metric model's frames over its fixed range (as the CLI's videos):
    5 m is the same colour whether the frame also holds 15 m or not; a relative model's
    colours follow each connection's steadied range instead."""
    from runtime.inputs.images import load
    from runtime.model.model_description import DA_V2_SMALL_METRIC_INDOOR
    from runtime.outputs.render import colour_range
    from runtime.outputs.postprocess import colorize
    from serve.stream import _Stream

    app = create_app(settings())
    stream = _Stream(app.state.service, None, None, "127.0.0.1", cv2.COLORMAP_INFERNO,
                     app.state.service.models.default)
    photo = load(np.full((64, 64, 3), 90, np.uint8))
    near, mixed = np.full((64, 64), 5.0, np.float32), np.full((64, 64), 5.0, np.float32)
    mixed[:, 32:] = 15.0
    output = DA_V2_SMALL_METRIC_INDOOR.output
    want = colorize(near[:1, :1], cv2.COLORMAP_INFERNO, colour_range(output))[0, 0].astype(int)
    for depth in (near, mixed):
        jpeg, cut, _ = stream._render(DepthResult(depth, photo, output=output))
        colour = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[16, 8].astype(int)
        assert np.abs(colour - want).max() <= 6 and not cut, (colour, want)
