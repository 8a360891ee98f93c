"""The scheduler's chunks on Ray core: one ``NodeWorker`` actor per node, each chunk a
streaming generator call whose rows come back one by one as the worker's inputs finish.

Ray core, not Ray Data: a job is a list of paths the driver already has, so what Ray Data
added (blocks, its stats and coordinator actors, ~20 ms of CPU per call) bought nothing
here. What it gave is kept: URIs (the engine reads them), streaming (a bounded number of
chunks in flight, rows journaled as each lands) and bounded memory (chunks carry paths;
only ``--ship-bytes`` sends bytes, two chunks per worker at most).
"""

from __future__ import annotations

from .ray_session import BulkError, cause
from .scheduler import END, IN_FLIGHT, WorkerDied, WorkerFailed
from .worker import NodeWorker

TAKE_MAX = 1024  # rows fetched in one call at most


class RayBackend:
    """Workers spread one per node (then round robin). They restart when their process dies
    (``max_restarts=-1``); the calls in flight fail and the scheduler runs their inputs again
    (``max_task_retries=0``: retries are counted there, where a chunk can be split). Each
    reserves ``cpu_share`` of a CPU, not whole CPUs: its threads use the node's cores either
    way, and whole-CPU reservations left nothing for Ray's own work on small nodes. One call
    more than ``IN_FLIGHT`` may run at once, so ``stop`` reaches a worker busy with two chunks.
    """

    def __init__(self, model: str, spec, output: str, digest: str, threads: int | None, cpu_share: float,
                 run_options: dict | None = None) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        if not self.nodes:
            raise BulkError("the Ray cluster has no node with CPUs")
        self._ray, self._affinity = ray, NodeAffinitySchedulingStrategy
        self._remote = ray.remote(NodeWorker)
        self._args = (model, spec, output, digest)
        self._threads, self._cpu_share = threads, cpu_share
        self._run_options = run_options or {}  # DepthHeatmapper's input_size and engine

    def start(self, slot: int):
        node = self.nodes[slot % len(self.nodes)]
        return self._remote.options(
            num_cpus=self._cpu_share, max_restarts=-1, max_task_retries=0, max_concurrency=IN_FLIGHT + 1,
            scheduling_strategy=self._affinity(node["NodeID"], soft=True),
        ).remote(*self._args, self._threads or max(1, int(node["Resources"]["CPU"])), **self._run_options)

    def submit(self, worker, items, blobs):
        return worker.run.options(num_returns="streaming").remote(items, blobs)

    def wait(self, streams: list, timeout: float) -> list:
        return ready(streams, timeout)

    def take(self, stream) -> list:
        return take(stream)

    def stop(self, worker) -> None:
        worker.stop.remote()

    def kill(self, worker) -> None:
        self._ray.kill(worker, no_restart=False)


def ready(streams: list, timeout: float) -> list:
    """The streams with a row (or their end) ready: waits up to ``timeout`` for the first."""
    import ray

    got, rest = ray.wait(streams, num_returns=1, timeout=timeout)
    if got and rest:  # and every other stream with a row already there
        got += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
    return got


def take(stream) -> list:
    """Every row the stream has ready, fetched in one call (a driver taking them one by one
    fell behind workers with fast inputs), then its end or its worker's error."""
    import ray

    refs, end = [], None
    try:
        refs.append(next(stream))
        while len(refs) < TAKE_MAX and stream.next_ready():
            refs.append(next(stream))
    except StopIteration:
        end = END
    try:
        return ray.get(refs) + ([end] if end else [])
    except ray.exceptions.RayError:
        pass
    got = []
    for ref in refs:  # one of them is the worker's error: the rows before it still count
        try:
            got.append(ray.get(ref))
        except ray.exceptions.RayActorError as exc:
            return got + [WorkerDied(cause(exc), bool(getattr(exc, "actor_init_failed", False)))]
        except ray.exceptions.RayTaskError as exc:
            return got + [WorkerFailed(cause(exc))]
    return got + ([end] if end else [])
