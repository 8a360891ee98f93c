"""Access control: nobody computes on the service who was not let in.

``AccessPolicy`` holds the checks, each a public method that returns a refusal (an
``ApiError`` value, None when the request may go on), so the HTTP middleware
(``AccessControl``) and the WebSocket handshake (serve.stream) apply the same ones, and any
host of the app (uvicorn here; a Ray Serve replica) gets them. In order:

1. Host allow-list (``check_host``): loopback names, the bind address and
   ``--allowed-host`` (``*`` for any); a DNS-rebinding page reaches the server under its own
   name and gets 400. The probes (/healthz, /readyz) are exempt: load balancers and
   orchestrators send the pod's address, which no allow-list should need to name.
2. Origin (``check_origin``): a browser request from another site (``Origin`` not this
   server's and not a ``--cors-origin``, or ``Sec-Fetch-Site: cross-site`` outside a
   navigation) gets 403. A ``--cors-origin`` gets CORS from Starlette's
   ``CORSMiddleware`` (preflights answered, headers exposed, on refusals too).
3. API key (``authenticate``; ``Authorization: Bearer <key>``) on every route but the
   ``open`` ones: /healthz, the pages (they ask for the key) and, as settings say, /readyz
   and /metrics. Keys come from ``--api-key-file`` (one a line, ``#`` comments) and
   ``MIDAS_ONNX_API_KEYS``; each must carry at least 128 bits (``key_bits``: 32 hex digits,
   22 base64url characters). They are compared in constant time (SHA-256 digests, every key
   compared) and never logged: logs and metrics show a key's id, an HMAC of the key under
   ``MIDAS_ONNX_KEY_ID_SECRET`` (random per start unless set), so an id is no offline oracle. The
   file is re-read on SIGHUP and when its mtime changes. Missing or wrong key: 401 with
   ``WWW-Authenticate``. With no keys at all, a request that arrived on a non-loopback
   address is refused (403) unless ``--insecure-no-auth``; the CLI refuses to bind there in
   the first place.
4. Per-key limits (``admit_key``): requests per second (serve.buckets) and requests in
   progress; beyond either, 429 with ``Retry-After``.

Before all of these, a client address that has had too many requests refused waits and
gets 429 (serve.refusals); every 4xx answered here or by the app counts against it. Only
the paths that need no key and cannot be refused for what they carry (``unthrottled``:
/healthz, the favicon, and /readyz and /metrics when they are open) are never slowed nor
counted: a held liveness probe gets its pod restarted, while a path that asks for a key is
where keys are guessed.

Starlette's ``TrustedHostMiddleware`` is not used for step 1: it answers in plain text and
cannot leave the probes out, and the check is the few lines of ``check_host``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import signal
import string
import threading

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware

from .buckets import Buckets
from .errors import ApiError
from .refusals import RefusalThrottle, client_of
from .settings import ServeSettings

log = logging.getLogger("midas_onnx.serve")
PROBES = frozenset({"/healthz", "/readyz"})
PAGES = frozenset({"/", "/live", "/static/key.js"})  # they ask for the key themselves
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
MIN_KEY_BITS = 128
_RELOAD_POLL_S = 1.0
_ALPHABETS = ((string.digits, 10), (string.hexdigits, 16),
              (string.ascii_letters + string.digits + "-_+/=", 64))


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def key_bits(key: str) -> float:
    """The bits a key of this length can carry over the smallest usual alphabet holding all
    its characters (decimal, hex, base64/base64url, else printable ASCII)."""
    size = next((n for chars, n in _ALPHABETS if all(c in chars for c in key)), 95)
    return len(key) * math.log2(size)


def bind_refusal(settings: ServeSettings) -> str | None:
    """Why the CLI must not bind to ``settings.host`` (None: it may). Keys that cannot be
    read or are too weak are a ValueError."""
    host = settings.host
    keys = len(AccessPolicy(settings, metrics=None).digests)
    if is_loopback(host) or settings.insecure_no_auth or keys:
        return None
    return (f"refusing to serve on {host} without API keys: anyone who reaches the port could use it. "
            "Give keys with --api-key-file PATH (one a line) or MIDAS_ONNX_API_KEYS=key1,key2, "
            "or pass --insecure-no-auth to serve openly.")


class AccessPolicy:
    """Keys, hosts, origins and per-key limits (see the module docstring)."""

    def __init__(self, settings: ServeSettings, metrics) -> None:
        s = self.settings = settings
        self.metrics = metrics
        self.digests: dict[bytes, str] = {}  # SHA-256 of a key -> its id
        self.refusals = RefusalThrottle(s.refusal_rate, s.refusal_burst)
        self.key_buckets = Buckets(s.key_rate, s.key_burst or max(1.0, 2 * s.key_rate))
        own = () if is_loopback(s.host) or s.host in ("0.0.0.0", "::", "") else (s.host,)  # the bind address
        self.any_host = "*" in s.allowed_hosts
        self.hosts = LOOPBACK_HOSTS | {h.lower() for h in (*s.allowed_hosts, *own)}
        self.cors = frozenset(o.rstrip("/") for o in s.cors_origins)
        self.open_paths = {"/healthz"} | PAGES | ({"/readyz"} if s.public_readyz else set()) | (
            {"/metrics"} if s.public_metrics else set())
        self._mtime: tuple[int, int] | None = None
        self._task: asyncio.Task | None = None
        self.reload(initial=True)

    # -- keys ------------------------------------------------------------------------------
    @property
    def auth_on(self) -> bool:
        return bool(self.settings.api_keys) or self.settings.api_key_file is not None

    def key_id(self, key: str) -> str:
        secret = self.settings.key_id_secret.get_secret_value().encode()
        return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:8]

    def reload(self, initial: bool = False) -> None:
        """Keys from the environment/settings and the file. A file that cannot be read, or a
        key too weak, is an error at start; later, the keys in force are kept and the
        problem logged."""
        try:
            keys = self._read_keys()
        except ValueError as exc:
            if initial:
                raise
            log.error("%s; keeping the keys in force", exc)
            return
        self.digests = {hashlib.sha256(k.encode()).digest(): self.key_id(k) for k, _ in keys}
        if keys:
            log.info("API keys %s: %d key(s), ids %s", "loaded" if initial else "reloaded", len(keys),
                     ", ".join(f"{self.key_id(k)} ({where})" for k, where in keys))

    def _read_keys(self) -> list[tuple[str, str]]:
        """(key, where it was given) for every key; ValueError for a file that cannot be
        read or a key under MIN_KEY_BITS (its place named, never the key)."""
        keys = [(k, f"MIDAS_ONNX_API_KEYS item {i}") for i, k in enumerate(self.settings.api_keys, 1)]
        path = self.settings.api_key_file
        if path is not None:
            try:
                stat = path.stat()
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"--api-key-file {path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") \
                    from None
            self._mtime = (stat.st_mtime_ns, stat.st_size)
            keys += [(line.strip(), f"{path.name} line {n}") for n, line in enumerate(lines, 1)
                     if line.strip() and not line.lstrip().startswith("#")]
        for key, where in keys:
            if key_bits(key) < MIN_KEY_BITS:
                raise ValueError(f"the API key at {where} is too weak ({len(key)} characters, at most "
                                 f"{key_bits(key):.0f} bits; at least {MIN_KEY_BITS}): make keys with "
                                 "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return keys

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

    # -- the checks: each returns a refusal, or None ---------------------------------------------
    def unthrottled(self, path: str) -> bool:
        """Paths never slowed nor counted by the refusal throttle (see the module docstring)."""
        return path in ("/healthz", "/favicon.ico") or (path in ("/readyz", "/metrics") and path in self.open_paths)

    def check_host(self, path: str, headers: Headers) -> ApiError | None:
        """Every Host header (a request has one; several are refused whatever they say) must
        be served here."""
        if self.any_host or path in PROBES:
            return None
        for host in headers.getlist("host") or [""]:
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.lower() not in self.hosts:
                return ApiError(400, "bad_host", f"host {host[:100]!r} is not served here (add it with --allowed-host)")
        if len(headers.getlist("host")) > 1:
            return ApiError(400, "bad_host", "more than one Host header")
        return None

    def check_origin(self, scheme: str, headers: Headers) -> ApiError | None:
        """A browser's request from another site is refused unless that site is a
        --cors-origin (every Origin header must pass)."""
        origins = [o.rstrip("/") for o in headers.getlist("origin") if o.rstrip("/") not in ("", "null")]
        for origin in origins:
            if origin not in (f"{scheme}://{headers.get('host', '')}", *self.cors):
                return ApiError(403, "cross_origin", f"requests from {origin[:100]} are not allowed (see --cors-origin)")
        if origins:
            return None
        if headers.get("sec-fetch-site") == "cross-site" and headers.get("sec-fetch-mode") != "navigate":
            return ApiError(403, "cross_origin", "cross-site requests are not allowed (see --cors-origin)")
        return None

    def authenticate(self, path: str, presented: str | None, server: tuple | None) -> tuple[str | None, ApiError | None]:
        """(the key's id, None) when ``presented`` (the key given, None for none) may reach
        ``path``; (None, refusal) otherwise."""
        if path in self.open_paths:
            return None, None
        if not self.auth_on:
            if server and not is_loopback(str(server[0])) and not self.settings.insecure_no_auth:
                return None, ApiError(403, "keys_required", "this server has no API keys and is reachable beyond "
                                      "loopback; its operator must give keys or --insecure-no-auth")
            return None, None
        if not presented:
            return None, ApiError(401, "unauthorized", "an API key is required: Authorization: Bearer <key>",
                                  headers={"WWW-Authenticate": 'Bearer realm="midas-onnx"'})
        kid = self.match(presented)
        if kid is None:
            return None, ApiError(401, "unauthorized", "the API key is not valid",
                                  headers={"WWW-Authenticate": 'Bearer realm="midas-onnx", error="invalid_token"'})
        return kid, None

    def admit_key(self, kid: str) -> ApiError | None:
        """One request in progress for ``kid`` (``release_key`` it), or the 429 refusing it."""
        s = self.settings
        bucket = self.key_buckets.get(kid)
        if s.key_concurrency and bucket.active >= s.key_concurrency:  # type: ignore[union-attr]
            return self._rate_limited(kid, 1.0)
        if s.key_rate > 0:
            wait = self.key_buckets.due(bucket)  # type: ignore[arg-type]
            if wait > 0:
                return self._rate_limited(kid, wait)
            bucket.tokens -= 1  # type: ignore[union-attr]
        bucket.active += 1  # type: ignore[union-attr]
        return None

    def release_key(self, kid: str) -> None:
        self.key_buckets.done(kid)

    @staticmethod
    def _rate_limited(kid: str, wait: float) -> ApiError:
        retry = max(1, math.ceil(wait))
        return ApiError(429, "rate_limited", f"too many requests for key {kid}; retry after {retry} s",
                        retry_after=retry)

    def count(self, refusal: ApiError, kid: str | None = None) -> None:
        if self.metrics is not None:
            self.metrics.refused.labels(refusal.code, kid or "-").inc()


def bearer(headers: Headers) -> str | None:
    """The key of an ``Authorization: Bearer`` header, if any."""
    scheme, _, presented = headers.get("authorization", "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" and presented.strip() else None


class AccessControl:
    """The ASGI middleware applying an ``AccessPolicy`` to HTTP requests (WebSockets pass
    through: serve.stream applies the same checks in its handshake). A ``--cors-origin``'s
    requests go through Starlette's CORSMiddleware first (preflights answered there, CORS
    headers on every answer, refusals included); any other's straight to the checks."""

    def __init__(self, app, policy: AccessPolicy) -> None:
        self.app, self.policy = app, policy
        self.cors_app = CORSMiddleware(self._throttled, allow_origins=sorted(policy.cors), allow_methods=["*"],
                                       allow_headers=["*"], max_age=600,
                                       expose_headers=["Retry-After", "Location", "WWW-Authenticate"])

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origin = Headers(scope=scope).get("origin", "").rstrip("/")
        await (self.cors_app if origin in self.policy.cors else self._throttled)(scope, receive, send)

    async def _throttled(self, scope, receive, send) -> None:
        """The refusal throttle (serve.refusals) around the checks."""
        policy = self.policy
        if policy.unthrottled(scope["path"]) or not policy.refusals.on:
            return await self._checked(scope, receive, send)
        client = client_of(scope)
        wait, pending = policy.refusals.admit(client)
        if wait > 0:
            return await self._slow_down(scope, receive, send, client, wait)
        status = [499]  # no answer: the client left

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._checked(scope, receive, counted)
        finally:
            policy.refusals.settle(client, pending, status[0])

    async def _checked(self, scope, receive, send) -> None:
        """Hosts, origins, keys and per-key limits (the module docstring's 1-4), then the app."""
        p, headers, path = self.policy, Headers(scope=scope), scope["path"]
        refusal = p.check_host(path, headers) or p.check_origin(scope.get("scheme", "http"), headers)
        kid = None
        if refusal is None:
            kid, refusal = p.authenticate(path, bearer(headers), scope.get("server"))
        if refusal is None and path not in p.open_paths:
            if kid is not None:
                scope["midas.key_id"] = kid
            refusal = p.admit_key(kid or "-")
            if refusal is None:
                try:
                    return await self.app(scope, receive, send)
                finally:
                    p.release_key(kid or "-")
        if refusal is not None:
            p.count(refusal, kid)
            return await refusal.response()(scope, receive, send)
        await self.app(scope, receive, send)

    async def _slow_down(self, scope, receive, send, client: str, wait: float) -> None:
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
        retry = 0 if holding else max(1, math.ceil(wait))
        when = "the next may be sent now" if holding else f"retry after {retry} s"
        refusal = ApiError(429, "too_many_refusals", f"too many refused requests from this client (more than "
                           f"{throttle.burst}, then {throttle.rate:g} a second); {when}", retry_after=retry,
                           headers={} if holding else {"Connection": "close"})
        self.policy.count(refusal)
        await refusal.response()(scope, receive, send)
