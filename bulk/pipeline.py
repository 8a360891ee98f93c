"""``bulk``: the job engine over Ray, from one machine to a cluster.

The driver prepares the job exactly as ``heatmap`` does (``runtime.engine.Job``: inputs,
``job.json`` check, plan against the manifest) before Ray starts, so every refusal costs
no Ray start-up; Ray then only carries chunks of items to one worker per node, each running
the engine's ``LocalRunner``. Rows come back one by one, as each input finishes, and are
journaled by the driver.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from runtime.engine import Job, OutputSpec, Summary

from .ray_session import BulkError, with_ray
from .scheduler import STALL_TIMEOUT_S, Scheduler

__all__ = ["BulkError", "BulkSettings", "run"]


@dataclass(frozen=True)
class BulkSettings:
    """How a bulk job runs. ``workers=None``: one per node; ``threads_per_worker=None``:
    each node's CPU count (whole-image threads over one session, as ``heatmap``).

    ``cpu_share``: the CPUs each worker reserves in Ray's accounting (``num_cpus``), not what
    it uses: its threads run on all of the node's cores regardless. A fraction, so that on
    small nodes whole-CPU reservations leave CPUs for Ray's own tasks and actors.

    ``stall_timeout``: seconds a worker may run inputs without any progress (a finished input
    or a video frame) before it counts as hung: it is killed and its inputs run again.

    ``input_size``, ``engine``: ``DepthHeatmapper``'s, the same in the driver's check and in
    every worker.
    """

    model: str
    spec: OutputSpec = field(default_factory=OutputSpec)
    address: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    chunk_size: int = 64
    force: bool = False
    ship_bytes: bool = False
    verbose: bool = False
    cpu_share: float = 0.5
    stall_timeout: float = STALL_TIMEOUT_S
    input_size: int | None = None
    engine: str = "onnxruntime"

    @property
    def run_options(self) -> dict:
        """``DepthHeatmapper``'s keyword arguments for how the model runs."""
        return {"input_size": self.input_size, "engine": self.engine}

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or (self.workers is not None and self.workers < 1) or (
                self.threads_per_worker is not None and self.threads_per_worker < 1):
            raise ValueError("chunk_size, workers and threads_per_worker must be >= 1")
        if self.stall_timeout <= 0:
            raise ValueError("stall_timeout must be > 0")


@dataclass
class BulkResult:
    summary: Summary
    job: Job
    nodes: dict[str, int]
    log: str | None  # Ray's output, kept when inputs failed
    tracebacks: list[str] = field(default_factory=list)  # host:file of workers' logs that failed rows name


def run(settings: BulkSettings, inputs: list[str], output: str) -> BulkResult:
    """Process a collection; rows are journaled as each input finishes."""
    from runtime import DepthHeatmapper

    importer = threading.Thread(target=_import_ray, name="import-ray")  # ~1 s, beside the checks
    importer.start()
    try:
        model = str(Path(settings.model).resolve())
        # checked before Ray starts, as every worker will run it
        hm = DepthHeatmapper(model, threads=1, colormap=settings.spec.colormap, **settings.run_options)
        job = Job.prepare(inputs, output, model, settings.spec, force=settings.force, command="midas-onnx bulk",
                          description=hm.info.description)
    finally:
        importer.join()
    nodes: dict[str, int] = {}
    logs: set[str] = set()

    def count(row: dict) -> None:
        if row.get("node"):
            nodes[row["node"]] = nodes.get(row["node"], 0) + 1
        if row["status"] == "failed" and row.get("log"):
            logs.add(f"{row.get('host', '')}:{row['log']}")

    def work() -> Summary:
        from .ray_backend import RayBackend

        backend = RayBackend(model, settings.spec, job.store.spec, job.digest, settings.threads_per_worker,
                             settings.cpu_share, settings.run_options)
        scheduler = Scheduler(backend, settings.workers or len(backend.nodes), job.digest,
                              ship_bytes=settings.ship_bytes, stall_timeout=settings.stall_timeout)
        return job.run(lambda items, on_rows, stop: scheduler.run(items, settings.chunk_size, on_rows, stop), count)

    with job:
        if not len(job.todo):
            return BulkResult(job.run(lambda items, on_rows, stop: None), job, nodes, None)
        summary, log = with_ray(settings.address, settings.verbose, work)
    if log and not summary.failed:
        Path(log).unlink(missing_ok=True)
        log = None
    return BulkResult(summary, job, nodes, log, sorted(logs))


def _import_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        pass  # reported where it is used
