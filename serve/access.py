"""Access control: nobody computes on the service who was not let in.

One pure-ASGI middleware (``AccessControl``) over one ``AccessPolicy``, so any host of the
same FastAPI app (uvicorn here; a Ray Serve deployment ingressing the app) gets the same
checks. In order, for every HTTP request:

1. Host allow-list: loopback names, the bind address and ``--allowed-host`` (``*`` for any);
   a DNS-rebinding page reaches the server under its own name and gets 400.
2. Origin: a browser request from another site (``Origin`` not this server's and not a
   ``--cors-origin``, or ``Sec-Fetch-Site: cross-site`` outside a navigation) gets 403; a
   ``--cors-origin`` gets proper CORS (preflight answered, headers exposed).
3. API key (``Authorization: Bearer <key>``) on every route but ``/healthz``, the upload
   page (it asks for the key) and, as settings say, ``/readyz`` and ``/metrics``. Keys come
   from ``--api-key-file`` (one a line, ``#`` comments) and ``MIDAS_ONNX_API_KEYS``; they are
   compared in constant time (SHA-256 digests, every key compared), never logged: logs and
   metrics show a key's id (the first 8 hex digits of its SHA-256). The file is re-read on
   SIGHUP and when its mtime changes. Missing or wrong key: 401 with ``WWW-Authenticate``.
   With no keys at all, a request that arrived on a non-loopback address is refused (403)
   unless ``--insecure-no-auth``; the CLI refuses to bind there in the first place.
4. Per-key limits: requests per second (token bucket) and requests in progress; beyond
   either, 429 with ``Retry-After``.

Before all of these, a client address that has had too many requests refused waits and
gets 429 (serve.refusals); every 4xx answered here or by the app counts against it. The
paths in ``UNTHROTTLED`` (probes, /metrics, the favicon) are never slowed, nor counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field

from .refusals import RefusalThrottle, client_of
from .settings import ServeSettings

log = logging.getLogger("midas_onnx.serve")
# never slowed nor counted for refusals (serve.refusals): a held liveness probe gets its pod
# restarted, and browsers ask for a favicon the service does not have
UNTHROTTLED = frozenset({"/healthz", "/readyz", "/metrics", "/favicon.ico"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_RELOAD_POLL_S = 1.0


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def bind_refusal(settings: ServeSettings) -> str | None:
    """Why the CLI must not bind to ``settings.host`` (None: it may). A key file that cannot
    be read is a ValueError."""
    host = settings.host
    if is_loopback(host) or settings.insecure_no_auth or keys_in(settings):
        return None
    return (f"refusing to serve on {host} without API keys: anyone who reaches the port could use it. "
            "Give keys with --api-key-file PATH (one a line) or MIDAS_ONNX_API_KEYS=key1,key2, "
            "or pass --insecure-no-auth to serve openly.")


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    active: int = 0


@dataclass
class AccessPolicy:
    settings: ServeSettings
    metrics: object
    digests: dict[bytes, str] = field(default_factory=dict)  # SHA-256 of key -> key id
    _mtime: tuple[int, int] | None = None
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _task: asyncio.Task | None = None
    refusals: RefusalThrottle = field(init=False)

    def __post_init__(self) -> None:
        self.refusals = RefusalThrottle(self.settings.refusal_rate, self.settings.refusal_burst)
        self.reload(initial=True)

    # -- keys ------------------------------------------------------------------------------
    @property
    def auth_on(self) -> bool:
        return bool(self.settings.api_keys) or self.settings.api_key_file is not None

    def reload(self, initial: bool = False) -> None:
        """Keys from the environment/settings and the file. A file that cannot be read at
        start is an error; later, the keys in force are kept and the problem logged."""
        keys = list(self.settings.api_keys)
        path = self.settings.api_key_file
        if path is not None:
            try:
                stat = path.stat()
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                if initial:
                    raise ValueError(f"--api-key-file {path}: cannot be read ({exc.strerror or exc})") from None
                log.error("API key file %s cannot be read (%s); keeping the keys in force", path, exc.strerror or exc)
                return
            self._mtime = (stat.st_mtime_ns, stat.st_size)
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        self.digests = {hashlib.sha256(k.encode()).digest(): key_id(k) for k in keys}
        if not initial:
            log.info("API keys reloaded: %d key(s) (%s)", len(self.digests), ", ".join(sorted(self.digests.values())))

    def match(self, presented: str) -> str | None:
        """The key id of ``presented``, comparing against every key in constant time."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, kid in self.digests.items():
            if hmac.compare_digest(digest, known):
                found = kid
        return found

    def start_reloading(self) -> None:
        """Re-read the key file on SIGHUP (main thread only) and when its mtime changes."""
        if self.settings.api_key_file is None:
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._poll())
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda s, f: loop.call_soon_threadsafe(self.reload))

    def stop_reloading(self) -> None:
        if self._task:
            self._task.cancel()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(_RELOAD_POLL_S)
            try:
                stat = self.settings.api_key_file.stat()  # type: ignore[union-attr]
            except OSError:
                continue
            if (stat.st_mtime_ns, stat.st_size) != self._mtime:
                self.reload()

    # -- limits ------------------------------------------------------------------------------
    def acquire(self, kid: str) -> float | None:
        """Take one request for ``kid``: None if allowed, else seconds until it would be."""
        s = self.settings
        now = time.monotonic()
        burst = s.key_burst or max(1.0, 2 * s.key_rate)
        b = self._buckets.setdefault(kid, _Bucket(burst, now))
        if s.key_concurrency and b.active >= s.key_concurrency:
            return 1.0
        if s.key_rate > 0:
            b.tokens = min(burst, b.tokens + (now - b.stamp) * s.key_rate)
            b.stamp = now
            if b.tokens < 1:
                return (1 - b.tokens) / s.key_rate
            b.tokens -= 1
        b.active += 1
        return None

    def release(self, kid: str) -> None:
        self._buckets[kid].active -= 1


class AccessControl:
    """The ASGI middleware applying an ``AccessPolicy`` (see the module docstring)."""

    def __init__(self, app, policy: AccessPolicy) -> None:
        self.app, self.policy = app, policy
        s = policy.settings
        self.allow_any_host = "*" in s.allowed_hosts
        own = () if is_loopback(s.host) or s.host in ("0.0.0.0", "::", "") else (s.host,)  # the bind address
        self.hosts = LOOPBACK_HOSTS | {h.lower() for h in (*s.allowed_hosts, *own)}
        self.cors = frozenset(o.rstrip("/") for o in s.cors_origins)
        pages = {"/", "/live", "/static/key.js"}  # they ask for the key themselves
        self.open_paths = {"/healthz"} | pages | ({"/readyz"} if s.public_readyz else set()) | (
            {"/metrics"} if s.public_metrics else set())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin", "").rstrip("/")
        cors = origin if origin in self.cors else None
        if scope["path"] in UNTHROTTLED or not self.policy.refusals.on:
            return await self._checked(scope, receive, send, headers, origin, cors)
        client = client_of(scope)
        wait, pending = self.policy.refusals.admit(client)
        if wait > 0:
            return await self._slow_down(scope, send, client, wait, cors)
        status = [499]  # no answer: the client left

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._checked(scope, receive, counted, headers, origin, cors)
        finally:
            self.policy.refusals.settle(client, pending, status[0])

    async def _checked(self, scope, receive, send, headers: dict, origin: str, cors: str | None) -> None:
        """Hosts, origins, keys and per-key limits (the module docstring's 1-4), then the app."""
        refusal = self._check_host(headers) or self._check_origin(scope, headers, origin)
        if refusal:
            return await self._refuse(scope, send, *refusal)
        if cors and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            return await _send_json(send, 204, None, _cors_headers(cors, preflight=True))
        refusal = self._authenticate(scope, headers)
        if refusal:
            return await self._refuse(scope, send, *refusal, cors=cors)
        if scope["path"] in self.open_paths:  # probes and the page: never limited per key
            return await self.app(scope, receive, _with_cors(send, cors) if cors else send)
        kid = scope.get("midas.key_id") or "-"
        wait = self.policy.acquire(kid)
        if wait is not None:
            retry = str(max(1, math.ceil(wait)))
            return await self._refuse(scope, send, 429, "rate_limited", f"too many requests for key {kid}; "
                                      f"retry after {retry} s", {"Retry-After": retry}, cors=cors)
        try:
            await self.app(scope, receive, _with_cors(send, cors) if cors else send)
        finally:
            self.policy.release(kid)

    async def _slow_down(self, scope, send, client: str, wait: float, cors: str | None) -> None:
        """429 for a client over its refusals, its body never read, answered when its next
        token is due (so a client looping on refusals loops at ``refusal_rate``). With no
        hold slot free (serve.refusals bounds them), answered at once, closing the connection."""
        throttle = self.policy.refusals
        holding = throttle.take_hold(client)
        if holding:
            try:
                await asyncio.sleep(wait)
            finally:
                throttle.end_hold(client)
        retry = str(0 if holding else max(1, math.ceil(wait)))
        when = "the next may be sent now" if holding else f"retry after {retry} s"
        await self._refuse(scope, send, 429, "too_many_refusals",
                           f"too many refused requests from this client (more than {throttle.burst}, then "
                           f"{throttle.rate:g} a second); {when}",
                           {"Retry-After": retry} | ({} if holding else {"Connection": "close"}), cors=cors)

    def _check_host(self, headers: dict) -> tuple | None:
        if self.allow_any_host:
            return None
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.lower() not in self.hosts:
            return 400, "bad_host", f"host {host[:100]!r} is not served here (add it with --allowed-host)"
        return None

    def _check_origin(self, scope: dict, headers: dict, origin: str) -> tuple | None:
        if origin and origin != "null":
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            if origin == own or origin in self.cors:
                return None
            return 403, "cross_origin", f"requests from {origin[:100]} are not allowed (see --cors-origin)"
        if origin == "null" or (headers.get("sec-fetch-site") == "cross-site"
                                and headers.get("sec-fetch-mode") != "navigate"):
            return 403, "cross_origin", "cross-site requests are not allowed (see --cors-origin)"
        return None

    def _authenticate(self, scope: dict, headers: dict) -> tuple | None:
        p = self.policy
        if scope["path"] in self.open_paths:
            return None
        if not p.auth_on:
            server = scope.get("server")
            if server and not is_loopback(str(server[0])) and not p.settings.insecure_no_auth:
                return 403, "keys_required", "this server has no API keys and is reachable beyond loopback; " \
                                             "its operator must give keys or --insecure-no-auth"
            return None
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return 401, "unauthorized", "an API key is required: Authorization: Bearer <key>", \
                {"WWW-Authenticate": 'Bearer realm="midas-onnx"'}
        kid = p.match(presented.strip())
        if kid is None:
            return 401, "unauthorized", "the API key is not valid", \
                {"WWW-Authenticate": 'Bearer realm="midas-onnx", error="invalid_token"'}
        scope["midas.key_id"] = kid
        return None

    async def _refuse(self, scope, send, status: int, code: str, message: str, headers: dict | None = None,
                      cors: str | None = None) -> None:
        self.policy.metrics.refused.labels(code, scope.get("midas.key_id") or "-").inc()
        headers = dict(headers or {}) | (_cors_headers(cors) if cors else {})
        await _send_json(send, status, {"error": {"status": status, "code": code, "message": message}}, headers)


def _cors_headers(origin: str, preflight: bool = False) -> dict[str, str]:
    out = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
           "Access-Control-Expose-Headers": "Retry-After, Location, WWW-Authenticate"}
    if preflight:
        out |= {"Access-Control-Allow-Methods": "GET, POST", "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600"}
    return out


def _with_cors(send, origin: str):
    extra = [(k.lower().encode(), v.encode()) for k, v in _cors_headers(origin).items()]

    async def cors_send(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": list(message.get("headers", [])) + extra}
        await send(message)

    return cors_send


async def _send_json(send, status: int, body: dict | None, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()] + [(b"content-length", str(len(data)).encode())]
    if body is not None:
        raw.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def keys_in(settings: ServeSettings) -> int:
    """How many keys the settings give (file and environment), for the CLI's bind check."""
    policy = AccessPolicy(settings, metrics=None)
    return len(policy.digests) if policy.auth_on else 0

