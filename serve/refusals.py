"""Per-client throttle on refused requests: a client that keeps sending what the service
refuses (bombs, bad images, wrong keys, unknown paths) is slowed to ``rate`` refusals a
second, and its extra requests wait instead of looping.

Refusing a decompression bomb from its header is cheap, but a client looping on refusals
sends hundreds a second, and that loop, not any one request, is what takes CPU from honest
clients. So each client has a token bucket (serve.buckets) of ``burst`` refusals refilled
at ``rate`` a second: every answer in 400-499 but 408, 429 and 499 (a slow link, a limit's
own answer, a client that left) takes a token. A client with a refusal on record may have
only as many requests in progress as it has whole tokens (so opening more connections does
not multiply its refusals); beyond, it gets 429 ``too_many_refusals`` before its request is
read, answered only when its next token is due. A client with a clean record (a full
bucket) is not limited at all, so an honest client's mistake now and then is never noticed.

The client is its address (``scope["client"]``; behind a reverse proxy uvicorn takes it
from ``X-Forwarded-For`` for the proxies ``FORWARDED_ALLOW_IPS`` names, default 127.0.0.1
and ::1), an IPv6 address by its /64, which one host usually holds whole.

Bounded: at most ``serve.buckets.MAX_NAMES`` buckets; at most ``MAX_HELD`` answers held back
at once and ``MAX_HELD_PER_CLIENT`` per client (beyond, answered at once and the connection
closed).
"""

from __future__ import annotations

import ipaddress
import time

from .buckets import Buckets

MAX_HELD = 256
MAX_HELD_PER_CLIENT = 2
NOT_COUNTED = frozenset({408, 429, 499})


def counts_as_refusal(status: int) -> bool:
    """An answer to the client's own request being wrong (see the module docstring)."""
    return 400 <= status < 500 and status not in NOT_COUNTED


def client_of(scope: dict) -> str:
    """The throttled unit: the client's address, an IPv6 one by its /64."""
    host = str((scope.get("client") or ("-",))[0])
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network((host.split("%")[0], 64), strict=False))
    except ValueError:
        return host


class RefusalThrottle:
    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self.buckets = Buckets(rate, self.burst, clock)
        self.held = 0
        self._held_by: dict[str, int] = {}

    @property
    def on(self) -> bool:
        return self.rate > 0

    def admit(self, client: str) -> tuple[float, bool]:
        """(seconds ``client`` must wait, 0 when admitted; whether the admission holds one of
        its tokens until ``settle``)."""
        bucket = self.buckets.get(client, create=False) if self.on else None
        if bucket is None or bucket.tokens >= self.burst:
            return 0.0, False
        due = self.buckets.due(bucket, reserved=bucket.active)
        if not due:
            bucket.active += 1
        return due, not due

    def wait(self, client: str) -> float:
        """Seconds until ``client`` may be served (0: now), admitting nothing."""
        bucket = self.buckets.get(client, create=False) if self.on else None
        return 0.0 if bucket is None else self.buckets.due(bucket, reserved=bucket.active)

    def settle(self, client: str, pending: bool, status: int) -> None:
        """The request ``admit`` let in was answered ``status``."""
        if pending:
            self.buckets.done(client)
        if counts_as_refusal(status):
            self.refused(client)

    def refused(self, client: str) -> None:
        """``client`` was just refused: one token less."""
        if self.on:
            self.buckets.spend(client)

    def take_hold(self, client: str) -> bool:
        """A slot to hold ``client``'s answer back, if one is free (then ``end_hold`` it)."""
        if self.held >= MAX_HELD or self._held_by.get(client, 0) >= MAX_HELD_PER_CLIENT:
            return False
        self.held += 1
        self._held_by[client] = self._held_by.get(client, 0) + 1
        return True

    def end_hold(self, client: str) -> None:
        self.held -= 1
        left = self._held_by.pop(client) - 1
        if left:
            self._held_by[client] = left

    def clients(self) -> int:
        return len(self.buckets)
