"""The HTTP routes, as routers over one ``Service``.

Query parameters are declared with their ranges and choices, so the OpenAPI schema shows
them and FastAPI refuses bad values (in the service's error envelope, serve.errors). Work
goes through the one request flow (serve.flow); answers that carry an image's bytes are
``Answer``s, charged until their last byte is sent.
"""

import contextlib
from functools import partial
from importlib.resources import files
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.outputs.postprocess import COLORMAPS, colormap_id

from .errors import ApiError, envelope
from .flow import Answer
from .jobs import TooManyJobs
from .render import choose_format, parse_points, render
from .service import Service
from .uploads import read_images

Format = Literal["png", "json", "depth16", "npy", "pfm", "exr"]
Colormap = Literal[tuple(sorted(COLORMAPS))]  # type: ignore[valid-type]
ModelName = Annotated[str | None, Query(max_length=64, description="Which served model answers (/readyz lists "
                                        "them; default: the first)")]


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
            return envelope(503, "worker_died", f"inference stopped: {svc.dead()}")
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready for work: the model is loaded, the workers run, and the server is not draining."""
        try:
            svc.require_ready()
        except ApiError as exc:
            return envelope(503, exc.code, exc.message, {"Retry-After": str(svc.settings.retry_after)})
        models = [m.describe() for m in svc.models]
        first = models[0]  # the default model's, as before several could be served
        return JSONResponse({"ready": True, "model": first["file"], "input_size": first["input_size"],
                             "precision": first["precision"], "engine": first["engine"], "models": models,
                             "default_model": first["name"], "auth": auth_on()})

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        try:
            stats = await svc.jobs.refresh()
        except Exception:  # noqa: BLE001 - the job store away: its gauges as last read
            stats = svc.jobs.stats
        for state, count in stats["by_state"].items():
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
        model: ModelName = None,
    ) -> Response:
        """One image (multipart field ``file`` or the raw body) -> heatmap PNG, JSON, or a depth
        file: ``depth16`` (16-bit PNG, normalised), ``npy``/``pfm`` (float32), ``exr``.
        ``known_depths`` turns float depth into metres (a relative model's by scale and shift,
        a metric model's by a scale) and adds the fit to the JSON. ``model`` (query or form
        field): which of the server's models answers (default: the first)."""
        svc.require_ready()  # a service that cannot answer says so before reading the body
        fmt = choose_format(format, request.headers.get("accept", ""))
        cmap = colormap_id(colormap or settings.colormap)
        points = parse_points(known_depths, fmt, settings.max_known_points)
        served = svc.models.pick(model)  # an unknown name is refused before the body is read
        with _working(svc):
            uploads = await read_images(request, settings, svc.uploads, max_count=1)
            served = served if model else svc.models.pick(uploads.fields.get("model"))
            (name, data), = uploads
            answer = partial(render, fmt=fmt, cmap=cmap, with_overlay=overlay, alpha=alpha, model=served,
                             points=points)
            (body, media_type), charge = await svc.flow.run(data, name, answer, served, request=request)
            return Answer(body, media_type, settings.send_timeout, charge)

    return router


def jobs_router(svc: Service) -> APIRouter:
    router = APIRouter()
    settings = svc.settings

    def refused(exc: TooManyJobs) -> ApiError:
        if exc.per_key:
            return ApiError(429, "too_many_jobs", str(exc), retry_after=settings.retry_after)
        return ApiError(503, "too_many_jobs", str(exc), retry_after=settings.retry_after)

    @router.post("/v1/jobs", status_code=202)
    async def create_job(request: Request, colormap: Annotated[Colormap | None, Query()] = None,
                         model: ModelName = None) -> JSONResponse:
        """Queue one or more images (multipart ``file`` fields, or the raw body); returns at
        once. ``model`` (query or form field): which model runs them (default: the first)."""
        svc.require_ready()
        cmap = colormap_id(colormap or settings.colormap)
        served = svc.models.pick(model)
        key = request.scope.get("midas.key_id") or "-"
        if refusal := await svc.jobs.call("refusal", key):
            raise refused(TooManyJobs(*refusal))  # before a byte of the body is read
        with _working(svc):
            uploads = await read_images(request, settings, svc.uploads, max_count=settings.max_images_per_job)
        served = served if model else svc.models.pick(uploads.fields.get("model"))
        try:
            jid = await svc.jobs.create(len(uploads), sum(len(d) for _, d in uploads), key)
        except TooManyJobs as exc:
            raise refused(exc) from None
        svc.spawn(svc.run_job(jid, list(uploads), cmap, served))
        return JSONResponse({"id": jid, "status": "queued", "url": f"/v1/jobs/{jid}"}, status_code=202,
                            headers={"Location": f"/v1/jobs/{jid}"})

    @router.get("/v1/jobs/{job_id}")
    async def get_job(job_id: Annotated[str, Path(max_length=64)]) -> Response:
        view = await svc.jobs.call("view", job_id)
        if view is None:
            raise ApiError(404, "no_such_job", f"job {job_id[:64]} does not exist or has expired")
        return Answer(view.parts(), "application/json", settings.send_timeout)

    return router
