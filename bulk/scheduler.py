"""The driver's side of ``bulk``: chunks of items to node workers, with bounded retries.

Ray core carries the chunks, not Ray Data: a job is a list of paths the driver already
has, so what Ray Data added (blocks, its stats and coordinator actors, ~20 ms of CPU per
call) bought nothing here. What it gave is kept: URIs (the engine reads them), streaming (a
bounded number of chunks in flight, rows journaled as each returns) and bounded memory
(chunks carry paths; only ``--ship-bytes`` sends bytes, two chunks per worker at most).

Failures are bounded. A chunk whose worker dies (a crash, out of memory, a lost node) is
re-run up to ``TASK_RETRIES`` times on the restarted worker; its inputs are then run one by
one, one in flight per worker so none fails for another, and an input that still kills its
worker becomes a failed row. A worker that cannot start is recreated ``INIT_RETRIES``
times, then the job stops with one line naming the cause.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable

from runtime.engine import Item
from runtime.engine.plan import make_row
from runtime.engine.store import read_input

from .ray_session import BulkError, cause
from .worker import NodeWorker

TASK_RETRIES = 3
INIT_RETRIES = 3
IN_FLIGHT = 2  # chunks queued per worker: the next is there when one finishes


@dataclass
class Chunk:
    items: list[Item]
    tries: int = 0
    alone: bool = False  # the one-by-one pass: nothing else in flight on its worker


def chunk_size(inputs: int, limit: int, workers: int) -> int:
    """Items per chunk: ``limit``, or fewer so that every worker gets work twice over
    (12 photos on 2 workers: chunks of 3, not one chunk of 12 and an idle worker)."""
    return max(1, min(limit, math.ceil(inputs / (workers * IN_FLIGHT))))


class Scheduler:
    """Runs every item once through the workers; each row goes to ``on_row``."""

    def __init__(self, make_worker: Callable[[int], object], workers: int, digest: str, ship_bytes: bool) -> None:
        self.make_worker, self.digest, self.ship_bytes = make_worker, digest, ship_bytes
        self.workers = [make_worker(i) for i in range(workers)]
        self.init_failures = 0

    def run(self, items: list[Item], limit: int, on_row: Callable[[dict], None]) -> None:
        import ray

        size = chunk_size(len(items), limit, len(self.workers))
        queue = deque(Chunk(items[i:i + size]) for i in range(0, len(items), size))
        running: dict = {}  # ObjectRef -> (worker index, chunk)
        while queue or running:
            self._submit(queue, running)
            ready, _ = ray.wait(list(running), num_returns=1)
            index, chunk = running.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                self._died(index, chunk, exc, queue, on_row)
                continue
            except ray.exceptions.RayTaskError as exc:  # not an input's error: those are rows
                rows = [make_row(i, "failed", self.digest, error=f"{i.source}: {cause(exc)}") for i in chunk.items]
            for row in rows:
                on_row(row)

    def _submit(self, queue: deque, running: dict) -> None:
        """Fill every worker up to its share: ``IN_FLIGHT`` chunks, or one lone input."""
        load = [0] * len(self.workers)
        alone = [False] * len(self.workers)
        for index, chunk in running.values():
            load[index] += 1
            alone[index] |= chunk.alone
        for index in sorted(range(len(self.workers)), key=lambda i: load[i]):
            while queue and not alone[index] and (load[index] == 0 if queue[0].alone else load[index] < IN_FLIGHT):
                chunk = queue.popleft()
                blobs = {i.source: read_input(i.source) for i in chunk.items} if self.ship_bytes else None
                running[self.workers[index].run.remote(chunk.items, blobs)] = (index, chunk)
                load[index] += 1
                alone[index] = chunk.alone

    def _died(self, index: int, chunk: Chunk, exc, queue: deque, on_row: Callable[[dict], None]) -> None:
        if getattr(exc, "actor_init_failed", False):
            self.init_failures += 1
            if self.init_failures > INIT_RETRIES:
                raise BulkError(f"workers could not start ({INIT_RETRIES + 1} tries): {cause(exc)}")
            self.workers[index] = self.make_worker(index)
            queue.appendleft(chunk)
            return
        chunk.tries += 1
        if chunk.tries <= TASK_RETRIES:
            queue.appendleft(chunk)
        elif len(chunk.items) > 1:
            queue.extendleft(Chunk([item], alone=True) for item in reversed(chunk.items))
        else:
            item = chunk.items[0]
            on_row(make_row(item, "failed", self.digest,
                            error=f"{item.source}: the worker process died on each of {TASK_RETRIES + 1} tries with "
                                  "this input alone (a crash, or out of memory); skipped"))


def worker_factory(model: str, spec, output: str, digest: str, threads: int | None, cpu_share: float):
    """A function making the ``index``-th worker, spread one per node (then round robin).

    Workers restart when their process dies (``max_restarts=-1``); the calls that were in
    flight fail and the scheduler re-runs them (``max_task_retries=0``: retries are counted
    here, where a chunk can be split). Each reserves ``cpu_share`` of a CPU, not whole CPUs:
    its threads use the node's cores either way, and whole-CPU reservations left nothing for
    Ray's own work on small nodes.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not nodes:
        raise BulkError("the Ray cluster has no node with CPUs")
    remote = ray.remote(NodeWorker)

    def make(index: int):
        node = nodes[index % len(nodes)]
        return remote.options(
            num_cpus=cpu_share, max_restarts=-1, max_task_retries=0, max_concurrency=IN_FLIGHT,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=True),
        ).remote(model, spec, output, digest, threads or max(1, int(node["Resources"]["CPU"])))

    return make, len(nodes)
