"""Per-client throttle on refused requests: a client that keeps sending what the service
refuses (bombs, bad images, wrong keys, unknown paths) is slowed to ``rate`` refusals a
second, and its extra requests wait instead of looping.

Refusing a decompression bomb from its header costs about 0.3 ms of the event loop, but a
client looping on refusals sends hundreds a second, and that loop, not any one request, is
what takes CPU from honest clients. So each client has a token bucket of ``burst``
refusals refilled at ``rate`` a second: every answer in 400-499 but 408, 429 and 499 (a
slow link, a limit's own answer, a client that left) takes a token. A client with a
refusal on record may have only as many requests in progress as it has whole tokens (so
opening more connections does not multiply its refusals); beyond, it gets 429
``too_many_refusals`` before its request is read, answered only when its next token is due.
A client with a clean record (a full bucket) is not limited at all, so an honest client's
mistake now and then is never noticed.

The client is its address (``scope["client"]``; behind a reverse proxy uvicorn takes it
from ``X-Forwarded-For`` for the proxies ``FORWARDED_ALLOW_IPS`` names, default 127.0.0.1
and ::1), an IPv6 address by its /64, which one host usually holds whole.

Bounded: at most ``MAX_CLIENTS`` buckets (beyond, those owing least are forgotten, down to
90%, so the sort is rare); at most ``MAX_HELD`` answers held back at once and
``MAX_HELD_PER_CLIENT`` per client (beyond, answered at once and the connection closed).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_CLIENTS = 10_000
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


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    pending: int = 0  # requests in progress admitted against its tokens


class RefusalThrottle:
    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, max(1, burst), clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.held = 0
        self._held_by: dict[str, int] = {}

    @property
    def on(self) -> bool:
        return self.rate > 0

    def _refilled(self, client: str) -> _Bucket | None:
        bucket = self._buckets.get(client)
        if bucket is not None:
            now = self._clock()
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        return bucket

    def admit(self, client: str) -> tuple[float, bool]:
        """(seconds ``client`` must wait, 0 when admitted; whether the admission holds one of
        its tokens until ``settle``)."""
        bucket = self._refilled(client) if self.on else None
        if bucket is None or bucket.tokens >= self.burst:
            return 0.0, False
        due = self._due(bucket)
        if not due:
            bucket.pending += 1
        return due, not due

    def wait(self, client: str) -> float:
        """Seconds until ``client`` may be served (0: now), admitting nothing."""
        bucket = self._refilled(client) if self.on else None
        return 0.0 if bucket is None else self._due(bucket)

    def _due(self, bucket: _Bucket) -> float:
        """Seconds until a whole token is free beside the requests in progress (0: now)."""
        return 0.0 if bucket.tokens - bucket.pending >= 1 else (1 + bucket.pending - bucket.tokens) / self.rate

    def settle(self, client: str, pending: bool, status: int) -> None:
        """The request ``admit`` let in was answered ``status``."""
        bucket = self._buckets.get(client)
        if pending and bucket is not None:
            bucket.pending = max(0, bucket.pending - 1)
        if counts_as_refusal(status):
            self.refused(client)

    def refused(self, client: str) -> None:
        """``client`` was just refused: one token less."""
        if not self.on:
            return
        bucket = self._refilled(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(self.burst), self._clock())
        bucket.tokens = max(0.0, bucket.tokens - 1)
        self._buckets.move_to_end(client)
        self._forget()

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
        return len(self._buckets)

    def _forget(self) -> None:
        """Keep at most MAX_CLIENTS buckets: past it, forget the clients that owe least (full
        buckets first), down to 90% so that this sort is rare."""
        if len(self._buckets) <= MAX_CLIENTS:
            return
        now = self._clock()
        owed = sorted(self._buckets, key=lambda c: self._buckets[c].tokens + (now - self._buckets[c].stamp) * self.rate)
        for client in owed[MAX_CLIENTS * 9 // 10:]:
            del self._buckets[client]
