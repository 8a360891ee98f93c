"""The local executor: whole inputs in parallel threads over one shared session.

Each worker thread reads, decodes, pre-processes, infers, colours, encodes and writes one
input; the session (one, shared) runs each call on the calling thread (1 intra-op thread
per worker by default). Every stage is compute-bound, so two whole-image workers on two
cores beat one worker whose 2-thread inference leaves a core idle at every layer's join
while the other stages wait.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable

import cv2

from .plan import Item
from .process import process
from .spec import OutputSpec
from .store import Store


class LocalRunner:
    """Runs items through ``process`` on one pool of ``workers`` threads.

    ``runner(items, on_row)`` streams a whole job: a bounded window of inputs in flight
    (twice the workers, so memory is bounded however many inputs there are), rows to
    ``on_row`` in the calling thread as each finishes. ``runner.map(chunk)`` runs one chunk
    and returns its rows; several callers may map at once (a node worker takes its next
    chunk while the last images of the previous one finish), sharing the same threads.
    """

    def __init__(self, hm, spec: OutputSpec, store: Store, digest: str, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.hm, self.spec, self.store, self.digest, self.workers = hm, spec, store, digest, workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="midas-job")
        # Whole-image workers already fill the cores: OpenCV's own threads (decode, resize)
        # would only contend with them (12 MP photos: 0.21 against 0.18 of 640x480's rate
        # with OpenCV at one thread, benchmarks/outputs_bench.py). Restored on close.
        self._cv2_threads = cv2.getNumThreads()
        if workers > 1:
            cv2.setNumThreads(1)

    def _submit(self, item: Item, data: bytes | None = None) -> Future:
        return self.pool.submit(process, self.hm, item, self.spec, self.store, self.digest, data)

    def __call__(self, items: Iterable[Item], on_row: Callable[[dict], None]) -> None:
        pending: set[Future] = set()
        queue = iter(items)
        try:
            while True:
                while len(pending) < 2 * self.workers and (item := next(queue, None)) is not None:
                    pending.add(self._submit(item))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_row(future.result())
        finally:  # Ctrl-C: inputs not started are dropped; the ones running finish
            self.close()

    def map(self, items: list[Item], blobs: dict[str, bytes] | None = None) -> list[dict]:
        """Rows of one chunk, in its order; ``blobs``: inputs' bytes sent along (no shared storage)."""
        futures = [self._submit(item, (blobs or {}).get(item.source)) for item in items]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        cv2.setNumThreads(self._cv2_threads)
