"""The HTTP routes, as routers over one ``Service``.

Query parameters are declared with their ranges and choices, so the OpenAPI schema shows
them and FastAPI refuses bad values (in the service's error envelope, serve.errors).
"""


import asyncio
import contextlib
import logging
import time
from importlib.resources import files
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.postprocess import COLORMAPS, colormap_id

from .errors import ApiError, envelope
from .jobs import TooManyJobs
from .render import choose_format, parse_points, render, summary
from .service import Service
from .uploads import read_images

log = logging.getLogger("midas_onnx.serve")
Format = Literal["png", "json", "depth16", "npy", "pfm", "exr"]
Colormap = Literal[tuple(sorted(COLORMAPS))]  # type: ignore[valid-type]


@contextlib.contextmanager
def _working(svc: Service):
    """Counts accepted work, so a drain knows when it is done."""
    svc.active += 1
    try:
        yield
    finally:
        svc.active -= 1


def health_router(svc: Service, auth_on=lambda: False) -> APIRouter:
    """Probes, metrics and the page. ``auth_on()``: whether API keys are asked for (the page
    reads it from /readyz to know whether to ask for one)."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz():
        """Alive: 200 while the inference workers run (or the model is still loading)."""
        if not svc.alive():
            return envelope(503, "worker_died", f"inference stopped: {svc.batcher.dead}")  # type: ignore[union-attr]
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready for work: the model is loaded, the workers run, and the server is not draining."""
        if svc.ready():
            info = svc.hm.info  # type: ignore[union-attr]
            return JSONResponse({"ready": True, "model": svc.settings.model.name, "input_size": info.input_size_text,
                                 "precision": info.precision, "auth": auth_on()})
        try:
            svc.require_ready()
        except ApiError as exc:
            return envelope(503, exc.code, exc.message, {"Retry-After": str(svc.settings.retry_after)})
        return envelope(503, "not_ready", "not ready")  # pragma: no cover - require_ready raised above

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        for state, count in svc.jobs.by_state().items():
            svc.metrics.jobs.labels(state).set(count)
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(files("serve").joinpath("static/index.html").read_text(encoding="utf-8"))

    @router.get("/static/key.js", include_in_schema=False)
    async def key_script() -> Response:
        """The API key prompt both pages load."""
        return Response(files("serve").joinpath("static/key.js").read_text(encoding="utf-8"),
                        media_type="text/javascript")

    return router


def depth_router(svc: Service) -> APIRouter:
    router = APIRouter()
    settings = svc.settings

    @router.post("/v1/depth", responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def depth(
        request: Request,
        format: Annotated[Format | None, Query(description="Output; default from Accept (png or json)")] = None,
        colormap: Annotated[Colormap | None, Query(description="OpenCV colormap")] = None,
        overlay: bool = False,
        alpha: Annotated[float, Query(ge=0.0, le=1.0, description="Heatmap weight in the overlay")] = 0.5,
        known_depths: Annotated[str | None, Query(max_length=settings.max_query_bytes,
                                                  description="JSON list of [x, y, depth_m]")] = None,
    ) -> Response:
        """One image (multipart field ``file`` or the raw body) -> heatmap PNG, JSON, or a depth
        file: ``depth16`` (16-bit PNG, normalised), ``npy``/``pfm`` (float32), ``exr``.
        ``known_depths`` turns float depth into metres and adds the fit to the JSON."""
        svc.require_ready()  # a service that cannot answer says so before reading the body
        fmt = choose_format(format, request.headers.get("accept", ""))
        cmap = colormap_id(colormap or settings.colormap)
        points = parse_points(known_depths, fmt, settings.max_known_points)
        with _working(svc):
            (name, data), = await read_images(request, settings, svc.uploads, max_count=1)
            async with svc.holding(data, name):
                deadline = time.monotonic() + settings.timeout
                result = await svc.infer(data, name, request)
                del data
                started = time.perf_counter()
                try:
                    response = await asyncio.wait_for(
                        asyncio.to_thread(render, result, fmt, cmap, overlay, alpha, svc.hm.info.precision, points),
                        max(0.001, deadline - time.monotonic()))
                except TimeoutError:
                    raise ApiError(504, "timeout", f"no result within {settings.timeout:g} s") from None
                svc.metrics.stage.labels("render").observe(time.perf_counter() - started)
                return response

    return router


def jobs_router(svc: Service) -> APIRouter:
    router = APIRouter()
    settings = svc.settings

    def too_many() -> ApiError:
        return ApiError(503, "too_many_jobs", f"the job store is full ({settings.max_jobs} jobs or "
                        f"{settings.max_job_bytes:,} bytes held); retry later", retry_after=settings.retry_after)

    @router.post("/v1/jobs", status_code=202)
    async def create_job(request: Request, colormap: Annotated[Colormap | None, Query()] = None) -> JSONResponse:
        """Queue one or more images (multipart ``file`` fields, or the raw body); returns at once."""
        svc.require_ready()
        cmap = colormap_id(colormap or settings.colormap)
        if not svc.jobs.has_room():
            raise too_many()  # before a byte of the body is read
        with _working(svc):
            uploads = await read_images(request, settings, svc.uploads, max_count=settings.max_images_per_job)
        try:
            job = svc.jobs.create(len(uploads), sum(len(d) for _, d in uploads))
        except TooManyJobs:
            raise too_many() from None
        svc.spawn(_run_job(svc, job, uploads, cmap))
        return JSONResponse({"id": job.id, "status": job.status, "url": f"/v1/jobs/{job.id}"}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @router.get("/v1/jobs/{job_id}")
    async def get_job(job_id: Annotated[str, Path(max_length=64)]) -> dict:
        job = svc.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "no_such_job", f"job {job_id[:64]} does not exist or has expired")
        return job.view(settings.job_ttl)

    return router


async def _run_job(svc: Service, job, uploads: list[tuple[str, bytes]], cmap: int) -> None:
    """The job's images through the same batcher, as many at a time as the workers take at
    once (workers x max_batch); each waits for room (accepted work is never refused for load) and is
    decoded once. A bad image is an error entry, not a failed job."""
    job.status = "running"
    gate = asyncio.Semaphore(svc.settings.max_batch * svc.settings.inference_workers)

    async def one(index: int, name: str, data: bytes) -> None:
        async with gate:
            try:
                async with svc.holding(data, name, job=True):
                    result = await svc.infer(data, name, job=True)
                    entry = {"name": name, **await asyncio.to_thread(summary, result, cmap, svc.hm.info.precision)}
                    del result
            except ApiError as exc:
                entry = {"name": name, "error": exc.entry()}
            svc.jobs.add(job, index, entry, len(entry.get("heatmap_png_base64", "")), len(data))

    try:
        await asyncio.gather(*(one(i, name, data) for i, (name, data) in enumerate(uploads)))
        svc.jobs.finish(job)
    except asyncio.CancelledError:
        svc.jobs.finish(job, error="the server stopped before the job finished")
        raise
    except Exception as exc:  # noqa: BLE001 - a job never dies silently
        log.exception("job %s failed", job.id)
        svc.jobs.finish(job, error=f"{type(exc).__name__}: {exc}")
