"""The service object the routes share: model, batcher, jobs, uploads, metrics, drain state.

``start()`` loads the model in a background thread (``/readyz`` says when it is ready, or
why it failed) and starts the inference workers; ``stop()`` ends them. ``drain()`` is what
SIGTERM runs: ready turns false at once, new work is refused with 503 + Retry-After, and
accepted work (requests and jobs) finishes, for at most ``drain_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import numpy as np
from starlette.requests import Request

from runtime import DepthHeatmapper, ImageError, ImageTooLarge
from runtime.images import check_header, decode

from .batcher import Batcher, QueueFull, WorkerDied
from .budget import BYTES_PER_PIXEL, WorkBudget
from .errors import ApiError
from .jobs import JobStore
from .observe import Metrics
from .settings import ServeSettings
from .uploads import UploadGate

log = logging.getLogger("midas_onnx.serve")


class Service:
    def __init__(self, settings: ServeSettings, jobs=None) -> None:
        self.settings = settings
        self.hm: DepthHeatmapper | None = None
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self.batcher: Batcher | None = None
        self.jobs = jobs if jobs is not None else _job_store(settings)
        self.metrics = Metrics()
        self.uploads = UploadGate(settings.max_uploads, settings.retry_after)
        self.work = WorkBudget(settings.max_work_bytes)
        self.draining = False
        self.active = 0  # work requests in progress (uploads, inference, rendering)
        self._tasks: set[asyncio.Task] = set()

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.spawn(self._load_then_start())
        self.spawn(self._expire_jobs())
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth() if self.batcher else 0)
        self.metrics.jobs_bytes.set_function(lambda: self.jobs.held)
        self.metrics.work_bytes.set_function(lambda: self.work.held)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.batcher:
            await self.batcher.stop()

    async def _load_then_start(self) -> None:
        await asyncio.to_thread(self.load)
        if self.hm is not None:
            s = self.settings
            self.batcher = Batcher(self.hm.predict_batch, s.max_batch, s.max_wait_ms / 1000, s.queue_size,
                                   workers=s.inference_workers, observe=self.metrics.observe)
            self.batcher.start()

    async def _expire_jobs(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.05, self.settings.job_ttl / 4)))
            self.jobs.expire()

    def load(self) -> None:
        """Open the model and run it once; only then is it served. Any failure ends as
        /readyz 503 with the reason, logged once."""
        s = self.settings
        try:
            hm = DepthHeatmapper(s.model, threads=s.inference_threads, colormap=s.colormap, max_pixels=s.max_pixels)
            hm.predict(np.zeros((64, 64, 3), np.uint8)).heatmap  # warm-up: first run allocates
            self.hm = hm
        except Exception as exc:  # noqa: BLE001 - every failure must reach /readyz
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.load_error = detail[:500]
            log.error("model failed to load: %s", self.load_error)
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
        return self.batcher is None or self.batcher.alive()

    def ready(self) -> bool:
        return self.hm is not None and self.batcher is not None and self.batcher.alive() and not self.draining

    def require_ready(self) -> Batcher:
        retry = self.settings.retry_after
        if self.draining:
            raise ApiError(503, "draining", "the server is shutting down; retry on another instance", retry_after=retry)
        if self.batcher is not None and not self.batcher.alive():
            raise ApiError(503, "worker_died", f"inference stopped: {self.batcher.dead}")
        if not self.ready():
            if self.load_error:
                raise ApiError(503, "model_failed", f"model failed to load: {self.load_error}")
            raise ApiError(503, "loading", "the model is still loading", retry_after=retry)
        return self.batcher  # type: ignore[return-value]

    # -- work ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def holding(self, data: bytes, name: str, job: bool = False):
        """The block (inference and rendering of ``data``) charged to the work budget: the
        body plus ``BYTES_PER_PIXEL`` per pixel its header declares (a header that cannot be
        read is the image's error, before anything is held). Refused with 503 when it does
        not fit; a job image (``job``) waits for room."""
        try:
            pixels = check_header(data, name, self.settings.max_pixels)
        except ImageError as exc:
            raise _image_error(exc) from None
        async with self.work.hold(len(data) + pixels * BYTES_PER_PIXEL, wait=job) as granted:
            if not granted:
                raise ApiError(503, "busy", f"the images in process hold {self.work.held / 2**20:,.0f} MB of "
                               f"{self.work.limit / 2**20:,.0f} MB; retry shortly", retry_after=self.settings.retry_after)
            yield

    async def infer(self, data: bytes, name: str, request: Request | None = None, job: bool = False):
        """Bytes -> DepthResult: admitted, then decoded once, then batched. A request waits
        at most ``timeout`` in all and gives its place back when its client goes;
        a job image (``job``) waits for room and for its turn however long the queue is
        (accepted work is never refused for load)."""
        batcher = self.require_ready()
        prepare = lambda: decode(data, name, self.settings.max_pixels)  # noqa: E731
        timeout = None if job else self.settings.timeout  # a job has no client waiting on it
        work = asyncio.ensure_future(batcher.run(prepare, wait=job, timeout_s=timeout))
        watch = asyncio.ensure_future(_disconnected(request)) if request is not None else None
        try:
            done, _ = await asyncio.wait({work, watch} - {None}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                raise ApiError(499, "client_gone", "the client disconnected")
            return work.result()
        except ImageError as exc:
            raise _image_error(exc) from None
        except QueueFull:
            raise ApiError(503, "busy", "the inference queue is full; retry shortly",
                           retry_after=self.settings.retry_after) from None
        except TimeoutError:
            raise ApiError(504, "timeout", f"no result within {self.settings.timeout:g} s") from None
        except WorkerDied as exc:
            raise ApiError(503, "worker_died", f"inference stopped: {exc}") from None
        finally:  # whatever ended the wait (even this handler's own cancellation), nothing is left behind
            for task in (work, watch):
                if task is not None and not task.done():
                    task.cancel()


def _image_error(exc: ImageError) -> ApiError:
    """An image refused from its header or by its decoder, in the service's terms."""
    if isinstance(exc, ImageTooLarge):
        return ApiError(413, "too_many_pixels", str(exc))
    return ApiError(422, "bad_image", str(exc))


def _job_store(settings: ServeSettings):
    """The in-process store, or with ``job_store="ray"`` the named Ray actor's (any replica answers)."""
    if settings.job_store == "ray":
        from .ray_jobs import RayJobStore

        return RayJobStore(settings)
    return JobStore(settings.job_ttl, settings.max_jobs, settings.max_job_bytes)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read by then, so the next ASGI message
    can only be the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
