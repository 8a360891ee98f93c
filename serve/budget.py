"""Bounded amounts that work takes and gives back: one class for the work budget's bytes, the
inference queue's places, the upload slots and the live-stream slots.

``Budget``: ``limit`` units; ``try_take`` answers at once (the caller refuses the request),
``take`` waits its turn (accepted work: job images), first come first served, and nobody
jumps a waiting taker. ``Charge``: what one piece of work holds. It is given back once its
owner has let go *and* no thread still works for it (``in_thread`` pins it for the
thread's life): a request cancelled while its decode, inference or render thread runs keeps
its bytes and its queue place until that thread ends, because the thread still holds the
pixels. So the budget bounds what is held, not what is awaited.

Everything here runs on the event loop; threads reach it through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Executor
from typing import Callable, TypeVar

T = TypeVar("T")


class Budget:
    """``limit`` units, taken and given back (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    def _fits(self, amount: int) -> bool:
        return self.held + amount <= self.limit or self.held == 0  # one alone always fits

    def try_take(self, amount: int = 1) -> bool:
        """Take ``amount`` now if it fits and nobody waits before it."""
        if self._waiting or not self._fits(amount):
            return False
        self.held += amount
        return True

    async def take(self, amount: int = 1) -> None:
        """Take ``amount``, waiting for room behind those already waiting."""
        if self.try_take(amount):
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting.append((amount, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted as it was cancelled
                self.give(amount)
            else:
                self._waiting = deque(w for w in self._waiting if w[1] is not granted)
                self._grant()
            raise

    def give(self, amount: int = 1) -> None:
        self.held -= amount
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            amount, granted = self._waiting.popleft()
            if not granted.done():
                self.held += amount
                granted.set_result(None)


class Charge:
    """``amount`` of a ``Budget`` held for one piece of work: given back when its owner has
    called ``release`` and every ``pin`` has been matched by an ``unpin``."""

    def __init__(self, budget: Budget, amount: int) -> None:
        self.budget, self.amount = budget, amount
        self._users, self._released = 1, False  # the owner

    def pin(self) -> None:
        self._users += 1

    def unpin(self) -> None:
        self._users -= 1
        if self._users == 0:
            self.budget.give(self.amount)
            self.amount = 0

    def release(self) -> None:
        """The owner lets go (idempotent)."""
        if not self._released:
            self._released = True
            self.unpin()

    def shrink(self, amount: int) -> None:
        """Hold only ``amount`` from now on (what is left to send), giving the rest back."""
        if 0 <= amount < self.amount and self._users:
            self.budget.give(self.amount - amount)
            self.amount = amount


async def in_thread(executor: Executor, fn: Callable[..., T], *args, charges: tuple[Charge, ...] = ()) -> T:
    """``fn(*args)`` in ``executor``. Each of ``charges`` stays pinned until the thread has
    ended, even when the caller is cancelled first (a task not yet started is cancelled
    with it and unpins at once)."""
    loop = asyncio.get_running_loop()
    for charge in charges:
        charge.pin()

    def unpin(_) -> None:
        for charge in charges:
            charge.unpin()

    def unpin_on_loop(done) -> None:
        try:
            loop.call_soon_threadsafe(unpin, done)
        except RuntimeError:  # the loop has closed: nothing is held any more
            pass

    future = executor.submit(fn, *args)
    future.add_done_callback(unpin_on_loop)
    return await asyncio.wrap_future(future)
