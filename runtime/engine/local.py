"""The local executor: whole inputs in parallel threads over one shared session.

Each worker thread reads, decodes, pre-processes, infers, colours, encodes and writes one
input; the session (one, shared) runs each call on the calling thread (1 intra-op thread
per worker by default). Every stage is compute-bound, so two whole-image workers on two
cores beat one worker whose 2-thread inference leaves a core idle at every layer's join
while the other stages wait. The window of inputs in flight is bounded (twice the workers),
so memory is too, however many inputs a job has.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable

from .plan import Item
from .process import process
from .spec import OutputSpec
from .store import Store


class LocalRunner:
    """Runs items through ``process`` on ``workers`` threads; rows go to ``on_row`` as each
    finishes (in the calling thread, so callbacks need no locks)."""

    def __init__(self, hm, spec: OutputSpec, store: Store, digest: str, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.hm, self.spec, self.store, self.digest, self.workers = hm, spec, store, digest, workers

    def __call__(self, items: Iterable[Item], on_row: Callable[[dict], None]) -> None:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="midas-job")
        pending: set[Future] = set()
        queue = iter(items)
        try:
            while True:
                while len(pending) < 2 * self.workers and (item := next(queue, None)) is not None:
                    pending.add(pool.submit(process, self.hm, item, self.spec, self.store, self.digest))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_row(future.result())
        finally:  # Ctrl-C: inputs not started are dropped, the ones running finish and are lost
            pool.shutdown(wait=True, cancel_futures=True)

    def run_list(self, items: list[Item]) -> list[dict]:
        """Rows of ``items`` (the unit of work a remote worker runs on its node)."""
        rows: list[dict] = []
        self(items, rows.append)
        return rows
