"""Token buckets by name: the one mechanism behind the per-key request limits (serve.access)
and the per-client refusal throttle (serve.refusals).

Each name (a key id, a client address) has a bucket of at most ``burst`` tokens refilled
at ``rate`` a second, and a count of requests in progress admitted against it. The table
is bounded: past ``limit`` names, those owing least (full buckets first, nothing in
progress) are forgotten, down to 90%, so the sort is rare.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_NAMES = 10_000


@dataclass
class TokenBucket:
    tokens: float
    stamp: float
    active: int = 0  # requests in progress admitted against it


class Buckets:
    def __init__(self, rate: float, burst: float, clock=time.monotonic, limit: int = MAX_NAMES) -> None:
        self.rate, self.burst, self.limit, self._clock = rate, max(1.0, burst), limit, clock
        self._table: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, name: str, create: bool = True) -> TokenBucket | None:
        """``name``'s bucket refilled to now (a new one is full); None if it has none and
        ``create`` is false."""
        bucket = self._table.get(name)
        now = self._clock()
        if bucket is None:
            if not create:
                return None
            self._forget()  # before the new one joins: it owes nothing yet
            bucket = self._table[name] = TokenBucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        return bucket

    def due(self, bucket: TokenBucket, reserved: int = 0) -> float:
        """Seconds until a whole token is free beside ``reserved`` ones (0: now)."""
        spare = bucket.tokens - reserved
        if spare >= 1:
            return 0.0
        return (1 - spare) / self.rate if self.rate > 0 else float("inf")

    def spend(self, name: str) -> TokenBucket:
        """One token less for ``name`` (never below zero)."""
        bucket = self.get(name)
        bucket.tokens = max(0.0, bucket.tokens - 1)  # type: ignore[union-attr]
        self._table.move_to_end(name)
        return bucket  # type: ignore[return-value]

    def done(self, name: str) -> None:
        """A request admitted against ``name`` has ended."""
        bucket = self._table.get(name)
        if bucket is not None:
            bucket.active = max(0, bucket.active - 1)

    def __len__(self) -> int:
        return len(self._table)

    def _forget(self) -> None:
        if len(self._table) < self.limit:
            return
        now = self._clock()
        owed = sorted(self._table, key=lambda n: self._table[n].tokens + (now - self._table[n].stamp) * self.rate)
        for name in owed[self.limit * 9 // 10:]:
            if self._table[name].active == 0:  # a request in progress keeps its bucket
                del self._table[name]
