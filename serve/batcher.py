"""Micro-batching between the event loop and one inference thread.

Requests are admitted first and decoded after: a request the queue cannot take costs no
decode (``QueueFull`` -> 503 at once), so overload does not make itself worse. Admitted
requests wait in the queue; a collector task takes up to ``max_batch`` of them (waiting at
most ``max_wait_s`` for more after the first) and runs one ``predict_batch`` call in the
inference thread. A caller that goes away (timeout, client disconnect) gives its place back
at once, and the collector skips its item. The event loop never runs inference.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable



class QueueFull(Exception):
    """The request queue is at its bound; the caller should retry later."""


@dataclass
class _Item:
    image: object
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    released: bool = False  # its queue place has been given back


class Batcher:
    def __init__(self, predict_batch: Callable[[list], list], max_batch: int,
                 max_wait_s: float, queue_size: int, on_batch: Callable[[int], None] | None = None) -> None:
        self._predict_batch = predict_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.capacity = queue_size
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()  # bounded by admission, not by put
        self._held = 0  # admitted and not yet handed to inference (decoding or queued)
        self._room: asyncio.Condition | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._on_batch = on_batch

    def start(self) -> None:
        self._room = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def depth(self) -> int:
        """Admitted requests not yet in an inference call (decoding or waiting)."""
        return self._held

    async def run(self, prepare: Callable[[], object], wait: bool = False):
        """Admit, then ``prepare()`` the image (decode, in a worker thread), queue it, and
        resolve to its ``DepthResult``.

        ``wait=False``: raise ``QueueFull`` at once when the queue is full (an HTTP request
        gets 503). ``wait=True``: wait for room (accepted job work). Cancelling the caller
        (timeout, disconnect) releases its place whatever stage it is in.
        """
        assert self._room is not None, "start() first"
        async with self._room:
            if self._held >= self.capacity:
                if not wait:
                    raise QueueFull()
                await self._room.wait_for(lambda: self._held < self.capacity)
            self._held += 1
        item: _Item | None = None
        try:
            image = await asyncio.to_thread(prepare)
            item = _Item(image, asyncio.get_running_loop().create_future())
            self.queue.put_nowait(item)
            return await item.future
        finally:
            if item is None or not item.released:  # not yet taken by the collector
                await self._release(item)

    async def _release(self, item: _Item | None) -> None:
        if item is not None:
            item.released = True
        async with self._room:  # type: ignore[union-attr]
            self._held -= 1
            self._room.notify()  # type: ignore[union-attr]

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [it for it in batch if not it.future.done()]  # cancelled callers are gone
            for it in live:
                if not it.released:
                    await self._release(it)  # in inference now: its queue place is free
            if not live:
                continue
            if self._on_batch:
                self._on_batch(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self._predict_batch, [it.image for it in live])
            except Exception as exc:  # a failing batch fails its requests, never the collector
                for it in live:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            for it, res in zip(live, results, strict=True):
                if not it.future.done():
                    it.future.set_result(res)
