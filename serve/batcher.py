"""Micro-batching between the event loop and one inference thread.

Requests wait in a bounded queue; a collector task takes up to ``max_batch`` of them (waiting
at most ``max_wait_s`` for more after the first) and runs one ``predict_batch`` call in the
inference thread. The event loop never runs inference, the queue never grows past its
bound (``QueueFull`` -> 503), and a fixed-size model runs a whole batch in one session call.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """The request queue is at its bound; the caller should retry later."""


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, predict_batch: Callable[[list[np.ndarray]], list], max_batch: int,
                 max_wait_s: float, queue_size: int, on_batch: Callable[[int], None] | None = None) -> None:
        self._predict_batch = predict_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._on_batch = on_batch

    def start(self) -> None:
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
        return self.queue.qsize()

    async def submit(self, image: np.ndarray):
        """Queue one decoded image; resolves to its ``DepthResult``. Raises ``QueueFull``."""
        item = _Item(image, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull() from None
        return await item.future

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
            live = [it for it in batch if not it.future.done()]  # timed-out callers are gone
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
