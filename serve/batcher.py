"""Micro-batching between the event loop and the inference workers.

Requests are admitted first and decoded after: a request the queue cannot take costs no
decode (``QueueFull`` -> 503 at once), so overload does not make itself worse. Admitted
requests wait in one queue; ``workers`` inference workers (one thread each) each take up to
``max_batch`` waiting images (waiting at most ``max_wait_s`` for more after the first) and
run one ``predict_batch`` call. Several workers with one inference thread each keep both
cores busy on small images, where one two-thread call leaves a core idle in its serial
parts (the ``heatmap`` CLI runs the same way). So ``max_batch`` is 1 by default: a
one-thread worker runs a batch of four no faster than four single calls, and waiting for
the batch to fill cost light load up to ``max_wait_s`` a request and synchronised the
clients into waves that left a core idle (4 clients, 640x480 JPEGs: 58 against 45
requests/s, p95 82 against 130 ms). A multi-thread worker may still gain from batches.

A caller that goes away (timeout, disconnect, cancelled handler) gives its place back and
takes its queued image (the decoded pixels) out of the queue at once. A worker that dies
(a bug, not an inference error: those fail their batch only) fails every waiting request
and makes ``alive()`` false, so /healthz fails and a supervisor restarts the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("midas_onnx.serve")
Observe = Callable[[str, float], None]  # (metric name, value): batch_size, queue/decode/inference seconds


class QueueFull(Exception):
    """The request queue is at its bound; the caller should retry later."""


class WorkerDied(Exception):
    """An inference worker has stopped; the service is no longer alive."""


@dataclass(eq=False)
class _Item:
    image: object
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    taken: bool = False  # by a worker, which gave its queue place back


class Batcher:
    def __init__(self, predict_batch: Callable[[list], list], max_batch: int, max_wait_s: float,
                 queue_size: int, workers: int = 1, observe: Observe | None = None) -> None:
        self._predict_batch = predict_batch
        self.max_batch, self.max_wait_s, self.capacity, self.workers = max_batch, max_wait_s, queue_size, workers
        self._waiting: deque[_Item] = deque()
        self._held = 0  # admitted and not yet taken by a worker (decoding or queued)
        self._room: asyncio.Condition | None = None
        self._arrived: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="inference")
        self._tasks: list[asyncio.Task] = []
        self._running: set[_Item] = set()  # taken by a worker, result not yet delivered
        self._observe = observe or (lambda name, value: None)
        self.dead: str | None = None
        self._stopping = False

    def start(self) -> None:
        self._room, self._arrived = asyncio.Condition(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for k in range(self.workers):
            task = loop.create_task(self._work(), name=f"inference-worker-{k}")
            task.add_done_callback(self._ended)
            self._tasks.append(task)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def alive(self) -> bool:
        return self.dead is None

    def depth(self) -> int:
        """Admitted requests not yet in an inference call (decoding or waiting)."""
        return self._held

    async def run(self, prepare: Callable[[], object], wait: bool = False, timeout_s: float | None = None):
        """Admit, then ``prepare()`` the image (decode, in a worker thread), queue it, and
        resolve to its ``DepthResult``. ``wait=False``: ``QueueFull`` at once when full;
        ``wait=True``: wait for room (accepted job work), the timeout counting from admission."""
        assert self._room is not None, "start() first"
        if self.dead:
            raise WorkerDied(self.dead)
        async with self._room:
            if self._held >= self.capacity:
                if not wait:
                    raise QueueFull()
                await self._room.wait_for(lambda: self._held < self.capacity)
            self._held += 1
        item: _Item | None = None
        try:
            async with asyncio.timeout(timeout_s):
                t = time.perf_counter()
                try:
                    image = await asyncio.to_thread(prepare)
                finally:  # refused images too: a deployment sees what bad input costs
                    self._observe("decode_seconds", time.perf_counter() - t)
                item = _Item(image, asyncio.get_running_loop().create_future())
                self._waiting.append(item)
                self._arrived.set()  # type: ignore[union-attr]
                return await item.future
        finally:
            if item is None or not item.taken:  # not taken by a worker: give it all back
                if item is not None:
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(item)
                    item.image = None
                await self._release()

    async def _release(self) -> None:
        async with self._room:  # type: ignore[union-attr]
            self._held -= 1
            self._room.notify()  # type: ignore[union-attr]

    async def _take(self) -> list[_Item]:
        """Up to max_batch waiting items: the first as soon as there is one, more for at
        most max_wait_s after it. Taken items leave the queue and give their places back."""
        loop = asyncio.get_running_loop()
        while not self._waiting:
            self._arrived.clear()  # type: ignore[union-attr]
            await self._arrived.wait()  # type: ignore[union-attr]
        batch = [self._waiting.popleft()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if self._waiting:
                batch.append(self._waiting.popleft())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)  # type: ignore[union-attr]
            except TimeoutError:
                break
        for it in batch:
            it.taken = True
            await self._release()
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            self._running.update(batch)
            now = time.perf_counter()
            for it in batch:
                self._observe("queue_seconds", now - it.enqueued)
            self._observe("batch_size", len(batch))
            images = [it.image for it in batch]
            for it in batch:
                it.image = None  # the worker holds the pixels now, the item never again
            try:
                results = await loop.run_in_executor(self._executor, self._predict_batch, images)
                if len(results) != len(batch):
                    raise RuntimeError(f"inference returned {len(results)} results for {len(batch)} images")
            except Exception as exc:  # a failing batch fails its requests, never the worker
                results = [exc] * len(batch)
            del images
            self._observe("inference_seconds", time.perf_counter() - now)
            for it, res in zip(batch, results, strict=True):
                if not it.future.done():
                    (it.future.set_exception if isinstance(res, Exception) else it.future.set_result)(res)
            self._running.difference_update(batch)

    def _ended(self, task: asyncio.Task) -> None:
        """A worker ended: expected when stopping; otherwise the service is dead."""
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        self.dead = f"{task.get_name()} stopped: {type(exc).__name__}: {exc}" if exc else f"{task.get_name()} stopped"
        log.error("inference worker died; the service is no longer alive (%s)", self.dead,
                  exc_info=(type(exc), exc, exc.__traceback__) if exc else None)
        orphans = list(self._waiting) + list(self._running)
        self._waiting.clear()
        self._running.clear()
        for item in orphans:
            item.image = None
            if not item.future.done():
                item.future.set_exception(WorkerDied(self.dead))
