"""The driver's side of ``bulk``: chunks of items to node workers, rows back one by one as
each input finishes, bounded retries. Ray-free: Ray is behind ``backend`` (``RayBackend``
in ``bulk.ray_backend``), so this logic is tested with fake workers.

Chunks carry tens of inputs (Ray's cost is per call), are made as the plan is read (never
all at once), and at most ``IN_FLIGHT`` are queued per worker. A worker streams each row
back as its input finishes, and the driver journals it at once: a killed driver redoes
only the inputs that were in flight.

Failures are bounded:
- A worker that dies (a crash, out of memory, a lost node) or hangs (no progress for
  ``stall_timeout`` seconds: it is killed and restarted) takes down the chunks it ran; their
  inputs without a row are run again, up to ``TASK_RETRIES`` more times, then one by one
  (one in flight per worker, so none fails for another), and an input that still takes
  its worker down becomes a failed row.
- A worker that cannot start is counted per worker: it is recreated up to ``INIT_RETRIES``
  times in a row, then retired, its work going to the others. The job stops, with one line
  naming the cause, only when no worker is left.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

from runtime.engine import Item
from runtime.engine.plan import make_row
from runtime.engine.store import StoreError, read_input

from .ray_session import BulkError

TASK_RETRIES = 3
INIT_RETRIES = 3
IN_FLIGHT = 2  # chunks queued per worker: the next is there when one finishes
TICK_S = 1.0  # the longest the driver waits for a row before it looks at the clock
STALL_TIMEOUT_S = 600.0
END = object()  # the last of what ``backend.take`` gives when a stream has no more rows


class WorkerDied(Exception):
    """The worker of a stream died (or could not start: ``init_failed``)."""

    def __init__(self, cause: str, init_failed: bool = False) -> None:
        super().__init__(cause)
        self.cause, self.init_failed = cause, init_failed


class WorkerFailed(Exception):
    """A worker's own code raised (not an input's error: those are rows); ``cause`` says what."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class Backend(Protocol):
    """What the scheduler needs of the machinery carrying its chunks."""

    def start(self, slot: int) -> object: ...  # a new worker for a slot
    def submit(self, worker: object, items: list[Item], blobs: dict | None) -> object: ...  # a stream
    def wait(self, streams: list, timeout: float) -> list: ...  # streams with a row (or their end) ready
    def take(self, stream: object) -> list: ...  # rows and heartbeats ready, maybe then END, WorkerDied or WorkerFailed
    def stop(self, worker: object) -> None: ...  # finish what runs, start nothing new
    def kill(self, worker: object) -> None: ...  # a hung worker: killed, then restarted


@dataclass
class Chunk:
    items: list[Item]
    tries: int = 0
    alone: bool = False  # the one-by-one pass: nothing else in flight on its worker


@dataclass
class _Running:
    slot: int
    generation: int
    chunk: Chunk
    left: dict[str, Item] = field(default_factory=dict)  # inputs without a row yet


def chunk_size(inputs: int, limit: int, workers: int) -> int:
    """Items per chunk: ``limit``, or fewer so that every worker gets work twice over
    (12 photos on 2 workers: chunks of 3, not one chunk of 12 and an idle worker)."""
    return max(1, min(limit, math.ceil(inputs / (workers * IN_FLIGHT))))


def chunks(items: Iterable[Item], size: int) -> Iterator[Chunk]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield Chunk(batch)
            batch = []
    if batch:
        yield Chunk(batch)


class Scheduler:
    """Runs every item once through the workers; rows go to ``on_rows`` as they land."""

    def __init__(self, backend: Backend, workers: int, digest: str, *, ship_bytes: bool = False,
                 stall_timeout: float = STALL_TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend, self.digest, self.ship_bytes = backend, digest, ship_bytes
        self.stall_timeout, self.clock = stall_timeout, clock
        self.workers = [backend.start(slot) for slot in range(workers)]
        self.generation = [0] * workers
        self.start_failures = [0] * workers
        self.retired = [False] * workers
        self.hung = [False] * workers
        self.heard = [(None, clock())] * workers  # (last heartbeat value, when progress was last seen)

    def run(self, items: Iterable[Item], limit: int, on_rows: Callable[[list[dict]], None],
            stop: threading.Event | None = None) -> None:
        """``items``: an iterable with a length (the plan's todo), read as chunks are made."""
        stop = stop or threading.Event()
        size = chunk_size(len(items), limit, len(self.workers))  # type: ignore[arg-type]
        fresh, retry = chunks(items, size), deque()
        running: dict[object, _Running] = {}
        stopping = False
        while True:
            rows: list[dict] = []
            if not stop.is_set():
                self._submit(fresh, retry, running, rows)
            elif not stopping:
                stopping = True
                for slot, worker in enumerate(self.workers):
                    if not self.retired[slot]:
                        self.backend.stop(worker)
            if not running and not rows:
                return
            for stream in self.backend.wait(list(running), TICK_S) if running else []:
                self._take(stream, running, retry, rows, stopping)
            self._check_stalls(running)
            if rows:
                on_rows(rows)

    def _take(self, stream, running: dict, retry: deque, rows: list[dict], stopping: bool) -> None:
        """Everything the stream has ready: rows, heartbeats, and maybe its end or its worker's."""
        run = running[stream]
        for got in self.backend.take(stream):
            if isinstance(got, WorkerDied):
                del running[stream]
                self._died(run, got, retry, rows)
            elif isinstance(got, WorkerFailed):
                del running[stream]
                rows += [make_row(i, "failed", self.digest, error=f"{i.source}: {got.cause}") for i in run.left.values()]
            elif got is END:
                del running[stream]
                if run.left and not stopping:  # ended early without being asked to: its inputs go round again
                    retry.appendleft(Chunk(list(run.left.values()), run.chunk.tries, run.chunk.alone))
            elif "heartbeat" in got:
                if got["heartbeat"] != self.heard[run.slot][0]:
                    self.heard[run.slot] = (got["heartbeat"], self.clock())
            else:
                run.left.pop(got["input"], None)
                self.heard[run.slot] = (self.heard[run.slot][0], self.clock())
                self.start_failures[run.slot] = 0  # it started: a later start failure is a new run of them
                rows.append(got)

    def _submit(self, fresh: Iterator[Chunk], retry: deque, running: dict, rows: list[dict]) -> None:
        """Fill every live worker up to its share: ``IN_FLIGHT`` chunks, or one lone input."""
        load = [0] * len(self.workers)
        alone = [False] * len(self.workers)
        for run in running.values():
            load[run.slot] += 1
            alone[run.slot] |= run.chunk.alone
        for slot in sorted(range(len(self.workers)), key=lambda s: load[s]):
            while not self.retired[slot] and not alone[slot] and load[slot] < IN_FLIGHT:
                chunk = retry.popleft() if retry else next(fresh, None)
                if chunk is None:
                    return
                if chunk.alone and load[slot] > 0:
                    retry.appendleft(chunk)  # a lone input waits for a worker with nothing else in flight
                    break
                blobs = self._blobs(chunk, rows) if self.ship_bytes else None
                if not chunk.items:
                    continue
                if not load[slot]:
                    self.heard[slot] = (self.heard[slot][0], self.clock())  # idle until now: not stalled
                stream = self.backend.submit(self.workers[slot], chunk.items, blobs)
                running[stream] = _Running(slot, self.generation[slot], chunk, {i.source: i for i in chunk.items})
                load[slot] += 1
                alone[slot] = chunk.alone

    def _blobs(self, chunk: Chunk, rows: list[dict]) -> dict[str, bytes]:
        """``--ship-bytes``: each image's bytes, read here; an input that cannot be read is
        its own failed row (the chunk goes on), and videos are not shipped (the worker
        reads them from their path, or says it cannot)."""
        blobs, keep = {}, []
        for item in chunk.items:
            try:
                if not item.video:
                    blobs[item.source] = read_input(item.source)
                keep.append(item)
            except StoreError as exc:
                rows.append(make_row(item, "failed", self.digest, error=str(exc)))
        chunk.items = keep
        return blobs

    def _check_stalls(self, running: dict) -> None:
        now = self.clock()
        for slot in {run.slot for run in running.values()}:
            if not self.hung[slot] and now - self.heard[slot][1] > self.stall_timeout:
                self.hung[slot] = True  # killed: its streams end with WorkerDied, handled as a crash
                self.backend.kill(self.workers[slot])

    def _died(self, run: _Running, exc: WorkerDied, retry: deque, rows: list[dict]) -> None:
        slot, left = run.slot, list(run.left.values())
        if exc.init_failed:
            if run.generation == self.generation[slot]:  # one failed start, however many chunks it had
                self._restart(slot, exc)
            if left:
                retry.appendleft(Chunk(left, run.chunk.tries, run.chunk.alone))
            return
        why = (f"the worker hung (no progress for {self.stall_timeout:g} s)" if self.hung[slot]
               else "the worker process died")
        self.hung[slot] = False
        self.heard[slot] = (None, self.clock())
        tries = run.chunk.tries + 1
        if not left:
            return
        if tries <= TASK_RETRIES:
            retry.appendleft(Chunk(left, tries, run.chunk.alone))
        elif len(left) > 1 or not run.chunk.alone:
            retry.extendleft(Chunk([item], alone=True) for item in reversed(left))
        else:
            item = left[0]
            rows.append(make_row(item, "failed", self.digest,
                                 error=f"{item.source}: {why} on each of {TASK_RETRIES + 1} tries with this input "
                                       "alone (a crash, out of memory, or a hang); skipped"))

    def _restart(self, slot: int, exc: WorkerDied) -> None:
        self.start_failures[slot] += 1
        if self.start_failures[slot] > INIT_RETRIES:
            self.retired[slot] = True
            if all(self.retired):
                raise BulkError(f"workers could not start ({INIT_RETRIES + 1} tries each): {exc.cause}")
            return
        self.workers[slot] = self.backend.start(slot)
        self.generation[slot] += 1
