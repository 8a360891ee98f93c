"""The service object the routes share: models, request flow, jobs, uploads, metrics, drain state.

``start()`` loads the models in a background thread (``/readyz`` says when they are ready,
or why one failed) and starts each one's inference workers; ``stop()`` ends them. ``drain()`` is what
SIGTERM runs: ready turns false at once, new work is refused with 503 + Retry-After, and
accepted work (requests, every image of accepted jobs, stream frames in flight) finishes,
for at most ``drain_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from functools import partial

from .batcher import Batcher
from .budget import Budget
from .errors import ApiError
from .flow import Flow
from .jobs import Jobs, JobStore
from .models import Models, ServedModel
from .observe import Metrics
from .render import summary
from .settings import ServeSettings

log = logging.getLogger("midas_onnx.serve")


class Service:
    def __init__(self, settings: ServeSettings, jobs: Jobs | None = None) -> None:
        self.settings = settings
        self.models = Models(settings)
        self.loaded = threading.Event()
        self.metrics = Metrics()
        self.flow = Flow(settings, self.metrics.observe)
        self.jobs = jobs if jobs is not None else _job_store(settings)
        self.uploads = Budget(settings.max_uploads)  # request bodies being received
        self.draining = False
        self.active = 0  # work requests in progress (uploads, inference, rendering)
        self._tasks: set[asyncio.Task] = set()

    @property
    def hm(self):
        """The default model's session (None until it has loaded)."""
        return self.models.default.hm

    @property
    def batcher(self) -> Batcher | None:
        """The default model's inference workers."""
        return self.models.default.batcher

    @property
    def load_error(self) -> str | None:
        """Why the first model that failed to load did (named when there are several)."""
        return next((self._named(m, m.load_error) for m in self.models if m.load_error), None)

    def dead(self) -> str | None:
        """Why a model's inference workers stopped (None while they all run or load)."""
        return next((self._named(m, str(m.batcher.dead)) for m in self.models
                     if m.batcher is not None and not m.batcher.alive()), None)

    def _named(self, model: ServedModel, why: str) -> str:
        return f"model {model.name}: {why}" if len(self.models.by_name) > 1 else why

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.spawn(self._load_then_start())
        self.spawn(self._expire_jobs())
        self.spawn(self.jobs.keep_leases())
        self.metrics.queue_depth.set_function(lambda: sum(m.batcher.depth() for m in self.models if m.batcher))
        self.metrics.jobs_bytes.set_function(lambda: self.jobs.stats["held"])
        self.metrics.work_bytes.set_function(lambda: self.flow.budget.held)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for model in self.models:
            if model.batcher:
                await model.batcher.stop()
        self.flow.close()

    async def _load_then_start(self) -> None:
        await asyncio.to_thread(self.load)
        for model in self.models:
            if model.hm is not None:
                self.serve_model(model)

    def serve_model(self, model: ServedModel) -> None:
        """Start a loaded model's inference workers and list it in /metrics."""
        model.start(self.settings, partial(self.metrics.observe, model=model.name))
        self.metrics.describe(model.describe())

    async def _expire_jobs(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.05, self.settings.job_ttl / 4)))
            try:
                await self.jobs.refresh()
            except Exception:  # noqa: BLE001 - a store briefly away must not end the loop
                log.warning("job store did not answer; retrying")

    def load(self) -> None:
        """Open each model and run it once (serve.models); only then is it served."""
        try:
            for model in self.models:
                model.load(self.settings)
        finally:
            self.loaded.set()

    async def drain(self) -> None:
        """Refuse new work, then wait for accepted work, at most drain_timeout."""
        self.draining = True
        deadline = time.monotonic() + self.settings.drain_timeout
        log.info("draining: new work refused; waiting up to %gs for accepted work", self.settings.drain_timeout)
        while (self.active or self.jobs.running()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.active + self.jobs.running()
        if left:
            log.warning("drain timeout: %d request(s)/job(s) unfinished", left)
        else:
            log.info("drained")

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- state -------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.dead() is None

    def ready(self) -> bool:
        return all(m.ready() for m in self.models) and not self.draining

    def require_ready(self) -> None:
        """Where work is accepted: a service that cannot take it says why (503)."""
        retry = self.settings.retry_after
        if self.draining:
            raise ApiError(503, "draining", "the server is shutting down; retry on another instance", retry_after=retry)
        if (dead := self.dead()) is not None:
            raise ApiError(503, "worker_died", f"inference stopped: {dead}")
        if not self.ready():
            if self.load_error:
                raise ApiError(503, "model_failed", f"model failed to load: {self.load_error}")
            raise ApiError(503, "loading", "the model is still loading", retry_after=retry)

    # -- jobs ----------------------------------------------------------------------------------
    async def run_job(self, jid: str, uploads: list, cmap: int, model: ServedModel | None = None) -> None:
        """The job's images through the request flow, as many at a time as the workers take
        at once (workers x max_batch). Each waits for room (accepted work is never refused
        for load), has ``--job-timeout``, and ends as its own entry, a result or an error:
        one image's failure, even an unexpected one, never hides the others'. An image's
        upload is dropped as its entry is added, when the store gives its bytes back."""
        gate = asyncio.Semaphore(self.settings.max_batch * self.settings.inference_workers)
        model = model or self.models.default
        render = partial(summary, cmap=cmap, model=model)
        failed = 0

        async def one(index: int) -> None:
            nonlocal failed
            async with gate:
                name, data = uploads[index]
                uploads[index] = None
                try:
                    entry, charge = await self.flow.run(data, name, render, model, job=True)
                    charge.release()
                    entry = {"name": name, **entry}
                except ApiError as exc:
                    entry = {"name": name, "error": exc.entry()}
                except Exception:  # noqa: BLE001 - one image's bug is its own entry, logged
                    incident = uuid.uuid4().hex[:12]
                    log.exception("unexpected error %s in job %s, image %d", incident, jid, index)
                    entry = {"name": name, "error": {"status": 500, "code": "internal_error",
                                                     "message": f"unexpected server error (incident {incident}, logged)"}}
                size = len(data)
                del data
                failed += "error" in entry
                try:
                    await self.jobs.call("add", jid, index, entry, len(entry.get("heatmap_png_base64", "")), size)
                except Exception:  # noqa: BLE001 - the store away: this entry is lost, the others go on
                    log.exception("job %s: image %d's entry could not be stored", jid, index)

        error = None
        try:
            try:
                await self.jobs.call("start", jid)
            except Exception:  # noqa: BLE001 - its entries still reach the store; its lease still runs
                log.warning("job %s could not be marked running", jid)
            await asyncio.gather(*(one(i) for i in range(len(uploads))))
        except asyncio.CancelledError:
            error = "the server stopped before the job finished"
            raise
        except Exception as exc:  # noqa: BLE001 - a job never dies silently
            log.exception("job %s failed", jid)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            await asyncio.shield(self.jobs.finish(jid, error))
            log.info("job %s %s: %d image(s), %d error(s)", jid, "failed" if error else "done", len(uploads), failed)


def _job_store(settings: ServeSettings) -> Jobs:
    """The in-process store, or with ``job_store="ray"`` the named Ray actor's (any replica answers)."""
    if settings.job_store == "ray":
        from .ray_jobs import ray_jobs

        return ray_jobs(settings)
    return Jobs.local(JobStore(settings.job_ttl, settings.max_jobs, settings.max_job_bytes,
                               settings.max_jobs_per_key))
