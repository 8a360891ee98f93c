"""Per-client throttle on refused requests: a client that keeps sending what the service
refuses (bombs, bad images, wrong keys, unknown paths) is slowed to ``rate`` refusals a
second, and its extra requests wait instead of looping.

Refusing a decompression bomb from its header costs about 0.3 ms of the event loop, but a
client looping on refusals sends hundreds a second, and that loop, not any one request, is
what takes CPU from honest clients. So each client address has a token bucket of
``burst`` refusals refilled at ``rate`` a second: every answer in 400-499 (but 429 and
499) takes a token; a client with less than one token gets 429 ``too_many_refusals``
before its request is read, answered only when its next token is due (``Retry-After``).
A client that waits as told, or makes an honest mistake now and then, never notices.

Bounded: at most ``MAX_CLIENTS`` buckets (beyond, those owing least are forgotten, down
to 90%, so the sort is rare) and at most ``MAX_HELD`` answers held back at once (beyond that, answered at once).
The client is ``scope["client"]``: behind a reverse proxy, uvicorn takes it from
``X-Forwarded-For`` for the proxies ``FORWARDED_ALLOW_IPS`` names (default 127.0.0.1).
"""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_CLIENTS = 10_000
MAX_HELD = 256


def counts_as_refusal(status: int) -> bool:
    """An answer to the client's own request being wrong: 4xx, except 429 (that is this
    throttle's or a per-key limit's answer, not the client's error) and 499 (it left)."""
    return 400 <= status < 500 and status not in (429, 499)


class RefusalThrottle:
    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, max(1, burst), clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # client -> [tokens, stamp]
        self.held = 0

    @property
    def on(self) -> bool:
        return self.rate > 0

    def _tokens(self, client: str, now: float) -> list[float] | None:
        bucket = self._buckets.get(client)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket

    def wait(self, client: str) -> float:
        """Seconds until ``client`` may be served again (0: now)."""
        if not self.on:
            return 0.0
        bucket = self._tokens(client, self._clock())
        return 0.0 if bucket is None or bucket[0] >= 1 else (1 - bucket[0]) / self.rate

    def refused(self, client: str) -> None:
        """``client`` was just refused: one token less."""
        if not self.on:
            return
        now = self._clock()
        bucket = self._tokens(client, now)
        if bucket is None:
            bucket = self._buckets[client] = [float(self.burst), now]
        bucket[0] = max(0.0, bucket[0] - 1)
        self._buckets.move_to_end(client)
        self._forget()

    def clients(self) -> int:
        return len(self._buckets)

    def _forget(self) -> None:
        """Keep at most MAX_CLIENTS buckets: past it, forget the clients that owe least (full
        buckets first), down to 90% so that this sort is rare."""
        if len(self._buckets) <= MAX_CLIENTS:
            return
        now = self._clock()
        owed = sorted(self._buckets, key=lambda c: self._buckets[c][0] + (now - self._buckets[c][1]) * self.rate)
        for client in owed[MAX_CLIENTS * 9 // 10:]:
            del self._buckets[client]
