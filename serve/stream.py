"""Live depth over a WebSocket: ``/v1/stream``, and the Live page that uses it (``/live``).

The client sends frames as binary messages (JPEG, or any image ``/v1/depth`` takes); for each
frame it computes, the server sends one JSON text message and then the heatmap as a binary
JPEG message of the frame's size::

    {"frame": 41, "latency_ms": 83.2, "dropped": 12, "width": 640, "height": 480, "cut": false}

``frame`` is the index (from 0) of the frame among those the client sent, so a client can
match a heatmap to what it sent; ``latency_ms`` is the server's time from the frame's arrival
to its heatmap being sent; ``dropped`` counts this connection's frames not computed so far.
A frame that cannot be computed (not an image, too many pixels, a timeout) answers
``{"frame": i, "error": {"status", "code", "message"}}`` instead, and the stream goes on.

Live means bounded latency, so one frame is in flight per connection: while it is being
computed, frames that arrive wait in one slot and a newer one replaces the waiting one (the
newest wins; the replaced one is dropped and counted). Each frame goes through the service's
one request flow like an HTTP request (serve.flow: charged, admitted before it is decoded,
the same queue bound, the same ``--timeout``): a frame the full queue or the work budget
cannot take is dropped and counted, not queued. Each connection has its own
``runtime.depth.steady.SteadyNormalizer``, so its colours stay steady from frame to frame
(``?colormap=`` picks the map).

Bounds: at most ``--max-streams`` (8) live connections, ``--max-streams-per-client`` (2)
from one client address; one over is accepted and closed at once with 1013 (try again
later) and a reason. A connection is closed (1000) after ``--stream-idle-timeout`` (60 s)
without a frame, counted from the last frame received or answered and never while one is
computed (text messages do not count: they cannot hold a place). A frame refused (not an
image, too many pixels, a text message) counts against the client like a refused HTTP
request (serve.refusals), and ``--max-bad-frames`` (8) of them close the connection (1008).
The receiving loop never sends; everything the server sends goes out from one task, each
message within ``--send-timeout``: a client that does not read is dropped, never stalls the
server. A message over ``max_body_bytes`` closes the connection with 1009 (uvicorn's own
``ws_max_size``, the same bound under the CLI, applies first). Messages are never
compressed (permessage-deflate is off: a JPEG frame gains nothing, and a compressed
message can inflate a thousandfold). A service that is loading or draining closes with
1013 or 1001 and the reason.

Access control: ``serve.access.AccessControl`` passes WebSocket scopes through untouched,
so this router applies the same ``AccessPolicy`` (``app.state.access``) through its public
checks: Host allow-list and Origin (a page of another site cannot open a stream: cross-site
WebSocket hijacking) refused in the handshake (HTTP 400/403), then the API key. Browsers
cannot set ``Authorization`` on a WebSocket, so the key may also come as a subprotocol,
``new WebSocket(url, ["midas-onnx", "midas-key." + base64url(key)])`` (the server answers
``midas-onnx`` and never echoes the key), or as ``?key=`` (left out of every log line by
``serve.lifecycle.RedactKeys``; proxies may log it, so prefer the subprotocol). A missing or
wrong key closes the accepted connection with 4401 and the reason (a browser sees close
codes, not handshake statuses); per-key limits count one connection as one request in
progress for its whole life (beyond them: 1013). Refused handshakes (host, origin, key)
count against the client like refused HTTP requests; a client over its refusals is denied
in the handshake (HTTP 429), not held.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import time
from collections import Counter, deque
from importlib.resources import files

from fastapi import APIRouter, WebSocket
from fastapi.responses import HTMLResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from runtime.outputs.render import colour_range, encode_image
from runtime.outputs.postprocess import COLORMAPS, colorize, colormap_id
from runtime.depth.steady import SteadyNormalizer

from .access import AccessPolicy, bearer
from .budget import Budget
from .errors import ApiError
from .models import ServedModel
from .refusals import client_of
from .service import Service

log = logging.getLogger("midas_onnx.serve")
PATH = "/v1/stream"
SUBPROTOCOL = "midas-onnx"
KEY_PROTOCOL = "midas-key."
# close codes: RFC 6455 ones, and 4401/4403 (application range) for a refused key
GOING_AWAY, UNSUPPORTED, POLICY, INTERNAL, TOO_BIG, TRY_AGAIN = 1001, 1003, 1008, 1011, 1009, 1013
UNAUTHORIZED, FORBIDDEN = 4401, 4403
_FATAL = {"draining": GOING_AWAY, "loading": TRY_AGAIN, "worker_died": INTERNAL, "model_failed": INTERNAL}
_CLOSE_WAIT_S = 1.0  # a close frame a client does not read is given up on after this long


def stream_router(svc: Service) -> APIRouter:
    """The ``/v1/stream`` WebSocket and the ``/live`` page over ``svc`` (see the module
    docstring)."""
    router = APIRouter()
    s = svc.settings
    slots = Budget(s.max_streams)
    by_client: Counter[str] = Counter()

    @router.get("/live", response_class=HTMLResponse, include_in_schema=False)
    async def live_page() -> HTMLResponse:
        """The Live page: the webcam beside its heatmap, over this stream."""
        return HTMLResponse(files("serve").joinpath("static/live.html").read_text(encoding="utf-8"))

    @router.websocket(PATH)
    async def stream(ws: WebSocket) -> None:
        policy: AccessPolicy = ws.app.state.access
        client = client_of(ws.scope)
        offered = list(ws.scope.get("subprotocols") or [])
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        kid, refusal = _handshake(ws, policy, client, offered)
        if refusal is not None:
            return await _refuse(ws, policy, subprotocol, refusal, kid)
        if not slots.try_take():
            return await _refuse(ws, policy, subprotocol, ApiError(
                TRY_AGAIN, "too_many_streams", f"too many live streams (at most {s.max_streams}); retry shortly"), kid)
        by_client[client] += 1
        admitted = False
        try:
            if by_client[client] > s.max_streams_per_client:
                return await _refuse(ws, policy, subprotocol, ApiError(
                    TRY_AGAIN, "too_many_streams", f"too many live streams from this client (at most "
                    f"{s.max_streams_per_client}); close one first"), kid)
            try:
                svc.require_ready()
            except ApiError as exc:
                return await _refuse(ws, policy, subprotocol, ApiError(_FATAL.get(exc.code, INTERNAL), exc.code,
                                                                       exc.message))
            if (limited := policy.admit_key(kid or "-")) is not None:
                return await _refuse(ws, policy, subprotocol, ApiError(TRY_AGAIN, limited.code, limited.message), kid)
            admitted = True
            cmap = ws.query_params.get("colormap") or s.colormap
            if cmap not in COLORMAPS:
                return await _refuse(ws, policy, subprotocol, ApiError(
                    UNSUPPORTED, "bad_colormap", f"colormap must be one of {', '.join(sorted(COLORMAPS))}"))
            try:
                model = svc.models.pick(ws.query_params.get("model"))
            except ApiError as exc:
                return await _refuse(ws, policy, subprotocol, ApiError(UNSUPPORTED, exc.code, exc.message))
            await ws.accept(subprotocol)
            svc.metrics.stream_connections.inc()
            try:
                await _Stream(svc, ws, policy, client, colormap_id(cmap), model).run()
            finally:
                svc.metrics.stream_connections.dec()
        finally:
            slots.give()
            by_client[client] -= 1
            if by_client[client] <= 0:
                del by_client[client]
            if admitted:
                policy.release_key(kid or "-")

    return router


def _handshake(ws: WebSocket, policy: AccessPolicy, client: str, offered: list[str]):
    """(key id, None) for a handshake the policy lets in, else (key id or None, refusal):
    HTTP statuses for host, origin and throttle (denied before accepting), WebSocket close
    codes 4401/4403 for keys (what a browser can read)."""
    if (wait := policy.refusals.wait(client)) > 0:  # as for HTTP (serve.refusals), without holding the handshake
        return None, ApiError(429, "too_many_refusals", f"too many refused requests from this client; at most "
                              f"{policy.refusals.rate:g} a second after {policy.refusals.burst}",
                              retry_after=max(1, math.ceil(wait)))
    headers = ws.headers
    scheme = "https" if ws.scope.get("scheme") == "wss" else "http"
    refusal = policy.check_host(PATH, headers) or policy.check_origin(scheme, headers)
    if refusal is None:
        key = _key_from(offered, ws.query_params.get("key"))
        kid, refusal = policy.authenticate(PATH, key if key is not None else bearer(headers), ws.scope.get("server"))
        if refusal is None:
            return kid, None
        if refusal.status == 401:  # the ways a WebSocket client can give one
            message = ("the API key is not valid" if "not valid" in refusal.message else
                       "an API key is required: the 'midas-key.<base64url key>' subprotocol, ?key= or "
                       "Authorization: Bearer")
            refusal = ApiError(UNAUTHORIZED, refusal.code, message)
        else:
            refusal = ApiError(FORBIDDEN, refusal.code, refusal.message)
    policy.refusals.refused(client)  # a key guesser over WebSocket is slowed as over HTTP
    return None, refusal


async def _refuse(ws: WebSocket, policy: AccessPolicy, subprotocol: str | None, refusal: ApiError,
                  kid: str | None = None) -> None:
    """Refuse the handshake: ``refusal.status`` an HTTP status (< 1000), answered as HTTP where
    the server can send one; else a WebSocket close code, sent after accepting (what a
    browser can read)."""
    policy.count(refusal, kid)
    if refusal.status < 1000:
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            return await ws.send_denial_response(refusal.response())
        return await ws.close(POLICY, _truncate(refusal.message))
    await ws.accept(subprotocol)
    await _close(ws, refusal.status, refusal.message)


class _Stream:
    """One connection: a receiver filling the one waiting slot, a sender computing frames
    and sending everything the server sends."""

    def __init__(self, svc: Service, ws: WebSocket, policy: AccessPolicy, client: str, cmap: int,
                 model: ServedModel) -> None:
        self.svc, self.ws, self.policy, self.client, self.cmap, self.model = svc, ws, policy, client, cmap, model
        self.settings = svc.settings
        self.steady = SteadyNormalizer()
        self.received = self.dropped = self.bad = 0
        self.waiting: tuple[int, bytes, float] | None = None  # (index, data, arrival)
        self.notices: deque[dict] = deque()  # error messages the sender owes the client
        self.busy = False  # a frame is being computed
        self.last_frame = time.monotonic()  # received or answered
        self.arrived = asyncio.Event()

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(c) for c in (self._receive(), self._send_loop(), self._watch_drain())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, (WebSocketDisconnect, TimeoutError)):
                        log.error("stream failed", exc_info=(type(exc), exc, exc.__traceback__))
                        await _close(self.ws, INTERNAL, "internal error (logged)")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.waiting = None
            await _close(self.ws, 1000, "")

    async def _receive(self) -> None:
        """Frames into the waiting slot, refused messages into the notices; never sends (a
        client that does not read cannot stall it)."""
        limit, idle = self.settings.max_body_bytes, self.settings.stream_idle_timeout
        while True:
            try:
                async with asyncio.timeout(max(0.0, idle - (time.monotonic() - self.last_frame))):
                    message = await self.ws.receive()
            except TimeoutError:
                if self.busy or self.waiting is not None:
                    self.last_frame = time.monotonic()  # the client is waiting for us, not idle
                    continue
                return await _close(self.ws, 1000, f"no frame for {idle:g} s; closed")
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                self._refused(ApiError(415, "bad_message", "send frames as binary messages (JPEG bytes)"))
                self.arrived.set()
                continue
            if len(data) > limit:
                return await _close(self.ws, TOO_BIG, f"a frame of {len(data):,} bytes; at most {limit:,}")
            if self.waiting is not None:  # the newest wins
                self._drop("replaced")
            self.waiting = (self.received, data, time.perf_counter())
            self.received += 1
            self.last_frame = time.monotonic()
            self.arrived.set()

    async def _send_loop(self) -> None:
        """Everything the server sends: each frame's answer, the error notices owed, and the
        close once too many frames were refused."""
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            if self.waiting is not None:
                index, data, arrival = self.waiting
                self.waiting = None
                if not await self._compute(index, data, arrival):
                    return
            while self.notices:
                await self._send(json.dumps(self.notices.popleft()))
            if self.bad >= self.settings.max_bad_frames:
                return await _close(self.ws, POLICY, f"{self.bad} frames or messages refused (at most "
                                    f"{self.settings.max_bad_frames}); closed")
            if self.waiting is not None:
                self.arrived.set()

    async def _compute(self, index: int, data: bytes, arrival: float) -> bool:
        """One frame through the request flow and its answer sent; False ends the stream."""
        self.svc.active += 1  # accepted work: a drain waits for it
        self.busy = True
        try:
            (heat, cut, (h, w)), charge = await self.svc.flow.run(data, f"frame {index}", self._render, self.model)
        except ApiError as exc:
            if exc.code == "busy":  # no room (queue or work budget): this frame is dropped, not queued
                self._drop("busy")
                return True
            if exc.code in _FATAL:
                await _close(self.ws, _FATAL[exc.code], exc.message)
                return False
            self.svc.metrics.stream_frames.labels("error").inc()
            self._refused(exc, index)
            return True
        finally:
            self.busy = False
            self.svc.active -= 1
        try:
            latency = (time.perf_counter() - arrival) * 1000
            await self._send(json.dumps({"frame": index, "latency_ms": round(latency, 1), "dropped": self.dropped,
                                         "width": w, "height": h, "cut": cut}))
            await self._send(heat)
        finally:
            charge.release()
        self.last_frame = time.monotonic()
        self.svc.metrics.stream_frames.labels("sent").inc()
        self.svc.metrics.stream_latency.observe(latency / 1000)
        return True

    def _refused(self, exc: ApiError, index: int | None = None) -> None:
        """A refused frame or message: owed to the client as a notice (at most
        --max-bad-frames of them wait), counted against it."""
        self.bad += 1
        self.policy.refusals.refused(self.client)
        self.notices.append({"frame": index, "error": exc.entry()} if index is not None else {"error": exc.entry()})
        while len(self.notices) > self.settings.max_bad_frames:
            self.notices.popleft()

    def _render(self, result) -> tuple[bytes, bool, tuple[int, int]]:
        """A relative model's colours steadied across frames; a metric model's span its fixed
        range of metres (``runtime.outputs.render.colour_range``), steady by themselves, as the CLI's videos."""
        span = colour_range(result.output)
        if span is not None:
            return encode_image(colorize(result.depth, self.cmap, span), "jpg"), False, result.depth.shape
        steady = self.steady.update(result.depth, result.image)
        return encode_image(steady.colorize(result.depth, self.cmap), "jpg"), steady.cut, result.depth.shape

    async def _send(self, message: str | bytes) -> None:
        """One message within --send-timeout (TimeoutError: the client does not read; the
        stream ends and the connection is dropped)."""
        async with asyncio.timeout(self.settings.send_timeout):
            if isinstance(message, str):
                await self.ws.send_text(message)
            else:
                await self.ws.send_bytes(message)

    async def _watch_drain(self) -> None:
        while not self.svc.draining:
            await asyncio.sleep(0.2)
        await _close(self.ws, GOING_AWAY, "the server is shutting down; reconnect to another instance")

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self.svc.metrics.stream_frames.labels(f"dropped_{why}").inc()


def _key_from(offered: list[str], query_key: str | None) -> str | None:
    for proto in offered:
        if proto.startswith(KEY_PROTOCOL):
            token = proto[len(KEY_PROTOCOL):]
            try:
                return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return ""  # present but unreadable: refused as a wrong key
    return query_key


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close with ``code`` and ``reason``, giving up after _CLOSE_WAIT_S on a client that does
    not read (uvicorn then drops the connection when the handler returns)."""
    if ws.application_state != WebSocketState.CONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
        async with asyncio.timeout(_CLOSE_WAIT_S):
            await ws.close(code, _truncate(reason))


def _truncate(reason: str, limit: int = 123) -> str:
    """A close reason is at most 123 bytes of UTF-8."""
    data = reason.encode("utf-8")
    return reason if len(data) <= limit else data[:limit - 3].decode("utf-8", "ignore") + "..."
