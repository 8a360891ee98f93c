"""Micro-batching between the event loop and the inference workers.

Requests are admitted first and decoded after: a request the queue cannot take costs no
decode (``QueueFull`` -> 503 at once), so overload does not make itself worse. An admitted
image holds one of ``queue_size`` places (a ``serve.budget.Budget``) from admission until a
worker takes it; it is decoded on the batcher's own decode executor (as many threads as
workers), so decodes never take the threads other work needs. ``workers`` inference workers
(one thread each) each take up to ``max_batch`` waiting images (waiting at most
``max_wait_s`` for more after the first) and run one ``predict_batch`` call. Several workers
with one inference thread each keep both cores busy on small images, where one two-thread
call leaves a core idle in its serial parts (the ``heatmap`` CLI runs the same way). So
``max_batch`` is 1 by default: a one-thread worker runs a batch of four no faster than four
single calls, and waiting for the batch to fill delays light load and synchronises clients
into waves that leave a core idle. A multi-thread worker may still gain from batches.

A caller that goes away (timeout, disconnect, cancelled handler) takes its queued image (the
decoded pixels) out of the queue at once; its place and its work charge come back when no
thread works for it any more: at once if it was waiting, when its decode ends if it was
being decoded, when its batch's inference ends if a worker had taken it. A worker that dies
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

from .budget import Budget, Charge, in_thread

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
    place: Charge
    work: Charge | None
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, predict_batch: Callable[[list], list], max_batch: int, max_wait_s: float,
                 queue_size: int, workers: int = 1, observe: Observe | None = None) -> None:
        self._predict_batch = predict_batch
        self.max_batch, self.max_wait_s, self.workers = max_batch, max_wait_s, workers
        self.places = Budget(queue_size)  # admitted, not yet taken by a worker (decoding or queued)
        self._waiting: deque[_Item] = deque()
        self._arrived: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="inference")
        self._decoders = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._tasks: list[asyncio.Task] = []
        self._running: set[_Item] = set()  # taken by a worker, result not yet delivered
        self._observe = observe or (lambda name, value: None)
        self.dead: str | None = None
        self._stopping = False

    def start(self) -> None:
        self._arrived = asyncio.Event()
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
        for pool in (self._executor, self._decoders):
            pool.shutdown(wait=False, cancel_futures=True)

    def alive(self) -> bool:
        return self.dead is None

    def depth(self) -> int:
        """Admitted requests not yet in an inference call (decoding or waiting)."""
        return self.places.held

    async def run(self, prepare: Callable[[], object], work: Charge | None = None, wait: bool = False):
        """Admit, then ``prepare()`` the image (decode, on the decode executor), queue it, and
        resolve to its ``DepthResult``. ``wait=False``: ``QueueFull`` at once when full;
        ``wait=True``: wait for a place (accepted job work). ``work``: the caller's charge,
        kept while a thread still holds this image's pixels."""
        assert self._arrived is not None, "start() first"
        if self.dead:
            raise WorkerDied(self.dead)
        if wait:
            await self.places.take()
        elif not self.places.try_take():
            raise QueueFull()
        place = Charge(self.places, 1)
        charges = (place,) if work is None else (place, work)
        item: _Item | None = None
        try:
            t = time.perf_counter()
            try:
                image = await in_thread(self._decoders, prepare, charges=charges)
            finally:  # refused images too: a deployment sees what bad input costs
                self._observe("decode_seconds", time.perf_counter() - t)
            item = _Item(image, asyncio.get_running_loop().create_future(), place, work)
            del image
            self._waiting.append(item)
            self._arrived.set()
            return await item.future
        finally:
            if item is not None and item in self._waiting:  # never taken: out of the queue now
                with contextlib.suppress(ValueError):
                    self._waiting.remove(item)
                item.image = None
            place.release()  # a worker that took it released it already

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
            it.place.release()
        return batch

    async def _work(self) -> None:
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
            works = tuple(it.work for it in batch if it.work is not None)
            try:  # the callers' charges stay until this call ends, whether or not they still wait
                results = await in_thread(self._executor, self._predict_batch, images, charges=works)
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
