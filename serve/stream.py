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
batcher like an HTTP request (``Service.infer``: admitted before it is decoded, the same
queue bound, the same ``timeout``): a frame the full queue cannot take is dropped
and counted, not queued. Each connection has its own ``runtime.steady.SteadyNormalizer``, so
its colours stay steady from frame to frame (``?colormap=`` picks the map).

Bounds: a connection that sends nothing for ``--stream-idle-timeout`` (60 s) is closed; at
most ``--max-streams`` (8) live connections; one over is accepted and closed at once with
1013 (try again later) and a reason. A message over ``max_body_bytes`` closes the
connection with 1009 (uvicorn's own ``ws_max_size``, 16 MiB by default, applies first when it
is smaller). A service that is loading or draining closes with 1013 or 1001 and the reason.

Access control: ``serve.access.AccessControl`` passes WebSocket scopes through untouched,
so this router applies the same ``AccessPolicy`` (``app.state.access``) itself, through the
middleware's own checks: Host allow-list and Origin (a page of another site cannot open a
stream: cross-site WebSocket hijacking) refused in the handshake (HTTP 400/403), then the API
key. Browsers cannot set ``Authorization`` on a WebSocket, so the key may also come as a
subprotocol, ``new WebSocket(url, ["midas-onnx", "midas-key." + base64url(key)])`` (the
server answers ``midas-onnx`` and never echoes the key), or as ``?key=`` (left out of
every log line by ``serve.lifecycle.RedactKeys``; proxies may log it, so prefer the subprotocol).
A missing or wrong key closes the accepted connection with 4401 and the reason (a browser
sees close codes, not handshake statuses); per-key limits count one connection as one
request in progress for its whole life (beyond them: 1013). Refused handshakes (host,
origin, key) count against the client like refused HTTP requests (serve.refusals); a client
over its refusals is denied in the handshake (HTTP 429), not held.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time

from importlib.resources import files

from fastapi import APIRouter, WebSocket
from fastapi.responses import HTMLResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from runtime.outputs import encode_image
from runtime.postprocess import COLORMAPS, colormap_id
from runtime.steady import SteadyNormalizer

from .access import AccessControl, AccessPolicy
from .errors import ApiError, envelope
from .refusals import client_of
from .service import Service

log = logging.getLogger("midas_onnx.serve")
PATH = "/v1/stream"
SUBPROTOCOL = "midas-onnx"
KEY_PROTOCOL = "midas-key."
# close codes: RFC 6455 ones, and 4401/4403 (application range) for a refused key
GOING_AWAY, UNSUPPORTED, INTERNAL, TOO_BIG, TRY_AGAIN = 1001, 1003, 1011, 1009, 1013
UNAUTHORIZED, FORBIDDEN = 4401, 4403
_FATAL = {"draining": GOING_AWAY, "loading": TRY_AGAIN, "worker_died": INTERNAL, "model_failed": INTERNAL}


def stream_router(svc: Service) -> APIRouter:
    """The ``/v1/stream`` WebSocket and the ``/live`` page over ``svc`` (see the module
    docstring)."""
    router = APIRouter()
    cap = svc.settings.max_streams
    idle_timeout_s = svc.settings.stream_idle_timeout
    metrics = _metrics(svc)
    live = {"open": 0}
    gates: dict[int, AccessControl] = {}

    def gate_for(ws: WebSocket) -> AccessControl:
        policy = getattr(ws.app.state, "access", None)
        if policy is None:  # an app built without create_app: the same policy from the settings
            policy = ws.app.state.access = AccessPolicy(svc.settings, svc.metrics)
        if id(policy) not in gates:
            gates.clear()
            gates[id(policy)] = AccessControl(None, policy)
        return gates[id(policy)]

    @router.get("/live", response_class=HTMLResponse, include_in_schema=False)
    async def live_page() -> HTMLResponse:
        """The Live page: the webcam beside its heatmap, over this stream."""
        return HTMLResponse(files("serve").joinpath("static/live.html").read_text(encoding="utf-8"))

    @router.websocket(PATH)
    async def stream(ws: WebSocket) -> None:
        gate = gate_for(ws)
        policy = gate.policy
        headers = {k.lower(): v for k, v in ws.headers.items()}
        origin = headers.get("origin", "").rstrip("/")
        http_scope = {**ws.scope, "scheme": "https" if ws.scope.get("scheme") == "wss" else "http"}
        client = client_of(ws.scope)
        if policy.refusals.wait(client) > 0:  # as for HTTP (serve.refusals), without holding the handshake
            return await _deny(ws, policy, 429, "too_many_refusals", "too many refused requests from this client; "
                               f"at most {policy.refusals.rate:g} a second after {policy.refusals.burst}")
        refusal = gate._check_host(headers) or gate._check_origin(http_scope, headers, origin)
        if refusal:
            policy.refusals.refused(client)
            return await _deny(ws, policy, *refusal)
        offered = list(ws.scope.get("subprotocols") or [])
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        key = _key_from(offered, ws.query_params.get("key"))
        if key is not None and "authorization" not in headers:
            headers["authorization"] = f"Bearer {key}"
        refusal = gate._authenticate(ws.scope, headers)
        if refusal:
            status, code, message = refusal[:3]
            policy.refusals.refused(client)  # a key guesser over WebSocket is slowed as over HTTP
            policy.metrics.refused.labels(code, "-").inc()
            if status == 401:  # the ways a WebSocket client can give one
                message = ("the API key is not valid" if "not valid" in message else
                           "an API key is required: the 'midas-key.<base64url key>' subprotocol, ?key= or "
                           "Authorization: Bearer")
            return await _refuse(ws, subprotocol, UNAUTHORIZED if status == 401 else FORBIDDEN, message)
        kid = ws.scope.get("midas.key_id") or "-"
        if live["open"] >= cap:
            policy.metrics.refused.labels("too_many_streams", kid).inc()
            return await _refuse(ws, subprotocol, TRY_AGAIN, f"too many live streams (at most {cap}); retry shortly")
        try:
            svc.require_ready()
        except ApiError as exc:
            return await _refuse(ws, subprotocol, _FATAL.get(exc.code, INTERNAL), exc.message)
        if policy.acquire(kid) is not None:
            policy.metrics.refused.labels("rate_limited", kid).inc()
            return await _refuse(ws, subprotocol, TRY_AGAIN, f"too many requests for key {kid}; retry shortly")
        live["open"] += 1
        metrics["connections"].inc()
        try:
            cmap = ws.query_params.get("colormap") or svc.settings.colormap
            if cmap not in COLORMAPS:
                return await _refuse(ws, subprotocol, UNSUPPORTED,
                                     f"colormap must be one of {', '.join(sorted(COLORMAPS))}")
            await ws.accept(subprotocol)
            await _Stream(svc, ws, colormap_id(cmap), metrics, idle_timeout_s).run()
        finally:
            live["open"] -= 1
            metrics["connections"].dec()
            policy.release(kid)

    return router


class _Stream:
    """One connection: a receiver filling the one waiting slot, a worker computing frames."""

    def __init__(self, svc: Service, ws: WebSocket, cmap: int, metrics: dict, idle_timeout_s: float) -> None:
        self.svc, self.ws, self.cmap, self.metrics, self.idle_timeout_s = svc, ws, cmap, metrics, idle_timeout_s
        self.steady = SteadyNormalizer()
        self.received = self.dropped = 0
        self.waiting: tuple[int, bytes, float] | None = None  # (index, data, arrival)
        self.arrived = asyncio.Event()

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(c) for c in (self._receive(), self._compute(), self._watch_drain())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, WebSocketDisconnect):
                        log.error("stream failed", exc_info=(type(exc), exc, exc.__traceback__))
                        await _close(self.ws, INTERNAL, "internal error (logged)")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.waiting = None
            await _close(self.ws, 1000, "")

    async def _receive(self) -> None:
        limit = self.svc.settings.max_body_bytes
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await self.ws.receive()
            except TimeoutError:
                await _close(self.ws, 1000, f"no frame for {self.idle_timeout_s:g} s; closed")
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await self._send_json({"error": {"status": 415, "code": "bad_message",
                                                 "message": "send frames as binary messages (JPEG bytes)"}})
                continue
            if len(data) > limit:
                await _close(self.ws, TOO_BIG, f"a frame of {len(data):,} bytes; at most {limit:,}")
                return
            if self.waiting is not None:  # the newest wins
                self._drop("replaced")
            self.waiting = (self.received, data, time.perf_counter())
            self.received += 1
            self.arrived.set()

    async def _compute(self) -> None:
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            if self.waiting is None:
                continue
            index, data, arrival = self.waiting
            self.waiting = None
            self.svc.active += 1  # accepted work: a drain waits for it
            try:
                try:
                    (heat, cut, (h, w)), charge = await self.svc.flow.run(data, f"frame {index}", self._render)
                    del data
                    charge.release()
                except ApiError as exc:
                    if exc.code == "busy":  # no room (queue or work budget): this frame is dropped, not queued
                        self._drop("busy")
                        continue
                    if exc.code in _FATAL:
                        await _close(self.ws, _FATAL[exc.code], exc.message)
                        return
                    self.metrics["frames"].labels("error").inc()
                    await self._send_json({"frame": index, "error": exc.entry()})
                    continue
            finally:
                self.svc.active -= 1
            latency = (time.perf_counter() - arrival) * 1000
            await self._send_json({"frame": index, "latency_ms": round(latency, 1), "dropped": self.dropped,
                                   "width": w, "height": h, "cut": cut})
            await self.ws.send_bytes(heat)
            self.metrics["frames"].labels("sent").inc()
            self.metrics["latency"].observe(latency / 1000)

    def _render(self, result) -> tuple[bytes, bool, tuple[int, int]]:
        steady = self.steady.update(result.depth, result.image)
        return encode_image(steady.colorize(result.depth, self.cmap), "jpg"), steady.cut, result.depth.shape

    async def _watch_drain(self) -> None:
        while not self.svc.draining:
            await asyncio.sleep(0.2)
        await _close(self.ws, GOING_AWAY, "the server is shutting down; reconnect to another instance")

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self.metrics["frames"].labels(f"dropped_{why}").inc()

    async def _send_json(self, body: dict) -> None:
        await self.ws.send_text(json.dumps(body))


def _key_from(offered: list[str], query_key: str | None) -> str | None:
    for proto in offered:
        if proto.startswith(KEY_PROTOCOL):
            token = proto[len(KEY_PROTOCOL):]
            try:
                return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return ""  # present but unreadable: refused as a wrong key
    return query_key


def _metrics(svc: Service) -> dict:
    """Stream metrics in the service's registry, made once per service."""
    made = getattr(svc.metrics, "_stream_metrics", None)
    if made is None:
        from prometheus_client import Counter, Gauge, Histogram

        r = svc.metrics.registry
        made = {
            "connections": Gauge("midas_stream_connections", "Live WebSocket streams open", registry=r),
            "frames": Counter("midas_stream_frames_total", "Stream frames by outcome (sent, dropped_replaced, "
                              "dropped_busy, error)", ["outcome"], registry=r),
            "latency": Histogram("midas_stream_frame_seconds", "Frame arrival to heatmap sent", registry=r,
                                 buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
        }
        svc.metrics._stream_metrics = made
    return made


async def _deny(ws: WebSocket, policy: AccessPolicy, status: int, code: str, message: str, *_) -> None:
    """Refuse in the handshake: an HTTP response where the server can send one, else a close."""
    policy.metrics.refused.labels(code, "-").inc()
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(envelope(status, code, message))
    else:
        await ws.close(1008, message[:120])


async def _refuse(ws: WebSocket, subprotocol: str | None, code: int, reason: str) -> None:
    """Accept, then close at once with ``code`` and ``reason``: what a browser can read."""
    await ws.accept(subprotocol)
    await _close(ws, code, reason)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state != WebSocketState.CONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.close(code, _truncate(reason))


def _truncate(reason: str, limit: int = 123) -> str:
    """A close reason is at most 123 bytes of UTF-8."""
    data = reason.encode("utf-8")
    return reason if len(data) <= limit else data[:limit - 3].decode("utf-8", "ignore") + "..."
