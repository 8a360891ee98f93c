"""The local executor: whole inputs in parallel threads over one shared session.

Each worker thread reads, decodes, pre-processes, infers, colours, encodes and writes one
input; the session (one, shared) runs each call on the calling thread (1 intra-op thread
per worker by default). Every stage is compute-bound, so two whole-image workers on two
cores beat one worker whose 2-thread inference leaves a core idle at every layer's join
while the other stages wait.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator

import cv2

from .plan import Item
from .process import process
from .spec import OutputSpec
from .store import Store


class LocalRunner:
    """Runs items through ``process`` on one pool of ``workers`` threads, a bounded window of
    them in flight (twice the workers), so memory is bounded however many inputs there are.

    ``runner(items, on_rows, stop)`` runs a whole job (the engine's executor); ``batches``
    streams the rows of any run as they land (``bulk``'s node workers; several may run at
    once on the same threads). ``progress`` counts finished items and video frames: a
    number that stops moving only when nothing moves.
    """

    def __init__(self, hm, spec: OutputSpec, store: Store, digest: str, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.hm, self.spec, self.store, self.digest, self.workers = hm, spec, store, digest, workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="midas-job")
        self.progress = 0
        # Whole-image workers already fill the cores: OpenCV's own threads (decode, resize)
        # would only contend with them (12 MP photos: 0.21 against 0.18 of 640x480's rate
        # with OpenCV at one thread, benchmarks/outputs_bench.py). Restored on close.
        self._cv2_threads = cv2.getNumThreads()
        if workers > 1:
            cv2.setNumThreads(1)

    def _tick(self) -> None:
        self.progress += 1  # a plain counter: a lost increment between threads costs nothing

    def _run(self, item: Item, data: bytes | None, stop: threading.Event) -> dict | None:
        row = process(self.hm, item, self.spec, self.store, self.digest, data, stop, self._tick)
        self._tick()
        return row

    def __call__(self, items: Iterable[Item], on_rows: Callable[[list[dict]], None],
                 stop: threading.Event | None = None) -> None:
        try:
            for rows in self.batches(items, stop=stop):
                on_rows(rows)
        finally:
            self.close()

    def batches(self, items: Iterable[Item], blobs: dict[str, bytes] | None = None,
                stop: threading.Event | None = None, idle: float | None = None) -> Iterator[list[dict]]:
        """Rows as they land, in batches (empty after ``idle`` seconds without one). Once
        ``stop`` is set nothing new starts; the items running finish (a video stops at its
        next frame, without a row) and their rows come out before the end."""
        stop = stop or threading.Event()
        queue, live = iter(items), set()
        while True:
            while not stop.is_set() and len(live) < 2 * self.workers and (item := next(queue, None)) is not None:
                live.add(self.pool.submit(self._run, item, (blobs or {}).get(item.source), stop))
            if not live:
                return
            done, live = wait(live, timeout=idle, return_when=FIRST_COMPLETED)
            yield [row for row in (f.result() for f in done) if row is not None]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        cv2.setNumThreads(self._cv2_threads)

