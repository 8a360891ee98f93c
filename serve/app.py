"""The HTTP service, built by ``create_app(settings)`` so tests and the CLI run the same app.

Endpoints: ``/`` (upload page), ``/healthz``, ``/readyz``, ``POST /v1/depth``,
``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``/metrics``. The model loads once, in a background
thread at start-up; inference runs in one worker thread fed by the micro-batcher; requests are
admitted before they are decoded; decoding and PNG encoding run in worker threads; the event
loop only moves bytes, and stops reading a body the moment it passes the size cap.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

from runtime import DepthHeatmapper, ImageError, ImageTooLarge, MidasOnnxError
from runtime.images import decode
from runtime.outputs import PNG_PARAMS, encode_png
from runtime.postprocess import colormap_id

from .batcher import Batcher, QueueFull
from .jobs import JobStore, TooManyJobs

log = logging.getLogger("midas_onnx.serve")
access_log = logging.getLogger("midas_onnx.access")
# ?format= -> content type; depth16/npy/pfm/exr are depth files (runtime.depth_files).
FORMATS = {"png": "image/png", "json": "application/json", "depth16": "image/png", "npy": "application/x-npy",
           "pfm": "image/x-portable-floatmap", "exr": "image/x-exr"}
DEPTH_FORMATS = {"depth16": "png16", "npy": "npy", "pfm": "pfm", "exr": "exr"}


@dataclass(frozen=True)
class ServeSettings:
    """Service limits and tuning; every bound here keeps memory and latency bounded."""

    model: Path
    threads: int | None = None
    colormap: str = "inferno"
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_batch: int = 4
    max_wait_ms: float = 10.0
    queue_size: int = 32
    request_timeout_s: float = 30.0
    job_ttl_s: float = 600.0
    max_jobs: int = 256
    max_images_per_job: int = 16
    retry_after_s: int = 1
    access_log: bool = True


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("midas_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("midas_request_seconds", "Request latency", ["route"], registry=self.registry,
                                 buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.queue_depth = Gauge("midas_queue_depth", "Images waiting for inference", registry=self.registry)
        self.batch_size = Histogram("midas_batch_size", "Images per inference call", registry=self.registry,
                                    buckets=(1, 2, 3, 4, 6, 8, 16))
        self.jobs = Gauge("midas_jobs_stored", "Jobs held (queued, running or awaiting expiry)", registry=self.registry)


class Service:
    """Everything the routes share: the model (once loaded), the batcher, jobs and metrics."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.hm: DepthHeatmapper | None = None
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self.batcher: Batcher | None = None
        self.jobs = JobStore(settings.job_ttl_s, settings.max_jobs)
        self.metrics = _Metrics()
        self._tasks: set[asyncio.Task] = set()

    def load(self) -> None:
        """Open the model and run it once; only then is it served. Any failure (not ours
        only: a bad colormap, an onnxruntime error on the warm-up run) ends as /readyz 503
        with the reason, logged once."""
        try:
            hm = DepthHeatmapper(self.settings.model, threads=self.settings.threads,
                                 colormap=self.settings.colormap, max_pixels=self.settings.max_pixels)
            hm.predict(np.zeros((64, 64, 3), np.uint8)).heatmap  # warm-up: first run allocates
            self.hm = hm
        except Exception as exc:  # noqa: BLE001 - every failure must reach /readyz
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.load_error = detail[:500]
            log.error("model failed to load: %s", self.load_error)
        finally:
            self.loaded.set()

    def ready(self) -> bool:
        return self.hm is not None and self.batcher is not None

    def require_ready(self) -> Batcher:
        if not self.ready():
            if self.load_error:
                raise ApiError(503, "model_failed", f"model failed to load: {self.load_error}")
            raise ApiError(503, "loading", "the model is still loading", retry_after=self.settings.retry_after_s)
        return self.batcher  # type: ignore[return-value]

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def infer(self, data: bytes, name: str, request: Request | None = None, wait: bool = False):
        """Bytes -> DepthResult: admitted first, then decoded (once), then batched; within
        the request timeout. ``request``: a client that disconnects gives its place back at
        once. ``wait``: wait for room instead of 503 (accepted job work)."""
        batcher = self.require_ready()
        work = asyncio.ensure_future(asyncio.wait_for(
            batcher.run(lambda: decode(data, name, self.settings.max_pixels), wait=wait),
            self.settings.request_timeout_s))
        watch = asyncio.ensure_future(_disconnected(request)) if request is not None else None
        try:
            done, _ = await asyncio.wait({work, watch} - {None}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                work.cancel()
                raise ApiError(499, "client_gone", "the client disconnected")
            return work.result()
        except ImageTooLarge as exc:
            raise ApiError(413, "too_many_pixels", str(exc)) from None
        except ImageError as exc:
            raise ApiError(422, "bad_image", str(exc)) from None
        except QueueFull:
            raise ApiError(503, "busy", "the inference queue is full; retry shortly",
                           retry_after=self.settings.retry_after_s) from None
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no result within {self.settings.request_timeout_s:g} s") from None
        finally:
            if watch is not None:
                watch.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read by then, so the next ASGI message
    can only be the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(settings: ServeSettings) -> FastAPI:
    svc = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load_then_start() -> None:
            await asyncio.to_thread(svc.load)
            if svc.hm is not None:
                hm = svc.hm
                svc.batcher = Batcher(hm.predict_batch, settings.max_batch,
                                      settings.max_wait_ms / 1000, settings.queue_size,
                                      on_batch=svc.metrics.batch_size.observe)
                svc.batcher.start()
                svc.metrics.queue_depth.set_function(svc.batcher.depth)

        async def expire_jobs() -> None:
            while True:
                await asyncio.sleep(min(5.0, max(0.05, settings.job_ttl_s / 4)))
                svc.jobs.expire()

        svc.spawn(load_then_start())
        svc.spawn(expire_jobs())
        svc.metrics.jobs.set_function(lambda: len(svc.jobs))
        yield
        for task in list(svc._tasks):
            task.cancel()
        if svc.batcher:
            await svc.batcher.stop()

    app = FastAPI(title="midas-onnx", version=_version(), lifespan=lifespan)
    app.state.service = svc

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"error": {"status": exc.status, "code": exc.code, "message": exc.message}},
                            status_code=exc.status, headers=headers)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - started
        svc.metrics.requests.labels(path, str(response.status_code)).inc()
        svc.metrics.latency.labels(path).observe(seconds)
        if settings.access_log:  # one line per request: method, path, status, ms, bytes
            access_log.info("%s %s %d %.1fms %sB", request.method, request.url.path, response.status_code,
                            seconds * 1000, response.headers.get("content-length", "-"))
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(files("serve").joinpath("static/index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not svc.ready():
            body = {"ready": False, "error": svc.load_error} if svc.load_error else {"ready": False}
            return JSONResponse(body, status_code=503, headers={"Retry-After": str(settings.retry_after_s)})
        info = svc.hm.info  # type: ignore[union-attr]
        return JSONResponse({"ready": True, "model": str(settings.model), "input_size": info.input_size_text,
                             "precision": info.precision})

    @app.post("/v1/depth", responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def depth(request: Request, format: str | None = None, colormap: str | None = None,
                    overlay: bool = False, alpha: float = 0.5, known_depths: str | None = None) -> Response:
        """One image (multipart field ``file`` or the raw body) -> heatmap PNG, JSON, or a depth
        file: ``depth16`` (16-bit PNG, normalised), ``npy``/``pfm`` (float32), ``exr``.

        The format comes from ``?format=``, else from ``Accept``. ``?known_depths=`` (JSON list
        of ``[x, y, depth_m]`` or ``{"x", "y", "depth_m"}``) turns float depth into metres and
        adds the fit to the JSON."""
        svc.require_ready()  # a service that cannot answer says so first
        fmt = _choose_format(format, request.headers.get("accept", ""))
        cmap = _check_render(colormap or settings.colormap, alpha)
        points = _parse_points(known_depths, fmt)
        uploads = await _read_images(request, settings, max_count=1)
        name, data = uploads[0]
        result = await svc.infer(data, name, request)
        return await run_in_threadpool(_render, result, fmt, cmap, overlay, alpha, svc, points)

    @app.post("/v1/jobs", status_code=202)
    async def create_job(request: Request, colormap: str | None = None) -> JSONResponse:
        """Queue one or more images (multipart ``file`` fields, or the raw body); returns at once."""
        svc.require_ready()
        cmap = _check_render(colormap or settings.colormap, 0.5)
        uploads = await _read_images(request, settings, max_count=settings.max_images_per_job)
        try:
            job = svc.jobs.create(len(uploads))
        except TooManyJobs:
            raise ApiError(503, "too_many_jobs", f"{settings.max_jobs} jobs are held; retry later",
                           retry_after=settings.retry_after_s) from None
        svc.spawn(_run_job(svc, job, uploads, cmap))
        return JSONResponse({"id": job.id, "status": job.status, "url": f"/v1/jobs/{job.id}"}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict:
        job = svc.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "no_such_job", f"job {job_id} does not exist or has expired")
        return job.view(settings.job_ttl_s)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


# --- helpers ---------------------------------------------------------------------------------
def _version() -> str:
    from midas_onnx import __version__

    return __version__


def _choose_format(fmt: str | None, accept: str) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ApiError(422, "bad_format", f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        return fmt
    return "json" if "application/json" in accept and "image/png" not in accept else "png"


def _check_render(cmap: str, alpha: float) -> int:
    if not 0.0 <= alpha <= 1.0:
        raise ApiError(422, "bad_alpha", f"alpha must be in [0, 1], got {alpha}")
    try:
        return colormap_id(cmap)
    except ValueError as exc:
        raise ApiError(422, "bad_colormap", str(exc)) from None


class _BodyTooLarge(Exception):
    pass


def _capped(request: Request, limit: int) -> Request:
    """The same request, whose body stops being read the moment it passes ``limit`` bytes:
    declared Content-Length or not, chunked or not, raw or multipart. Nothing past the cap
    is ever held."""
    receive = request.receive
    seen = 0

    async def capped_receive():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge()
        return message

    return Request(request.scope, capped_receive)


async def _read_images(request: Request, settings: ServeSettings, max_count: int) -> list[tuple[str, bytes]]:
    """Uploaded images as (name, bytes): multipart ``file`` fields or the raw body, size-capped
    while the bytes arrive."""
    limit = settings.max_body_bytes
    too_large = ApiError(413, "body_too_large", f"request body exceeds the limit of {limit:,} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    request = _capped(request, limit)
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=max_count, max_part_size=limit)
                uploads = [v for k, v in form.multi_items() if k == "file" and hasattr(v, "read")]
                if not uploads:
                    raise ApiError(400, "no_file", "multipart body has no 'file' field")
                return [(u.filename or "upload", await u.read()) for u in uploads]
            except (ApiError, _BodyTooLarge):
                raise
            except Exception as exc:  # Starlette's MultiPartException and parser errors
                raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
        if ctype and not (ctype.startswith("image/") or ctype.startswith("application/octet-stream")):
            raise ApiError(415, "unsupported_media_type",
                           f"send an image as multipart/form-data (field 'file') or as image/*, not {ctype}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
    except _BodyTooLarge:
        raise too_large from None
    if not body:
        raise ApiError(400, "empty_body", "no image in the request body")
    return [("upload", bytes(body))]


def _heatmap(result, cmap: int, with_overlay: bool, alpha: float) -> np.ndarray:
    return result.overlay(alpha, cmap) if with_overlay else result.colorized(cmap)


def _summary(result, cmap: int, svc: Service) -> dict:
    d = result.depth
    info = svc.hm.info  # type: ignore[union-attr]
    return {"width": int(d.shape[1]), "height": int(d.shape[0]), "precision": info.precision,
            "depth": {"min": float(d.min()), "max": float(d.max()), "mean": float(d.mean())},
            "heatmap_png_base64": base64.b64encode(encode_png(result.colorized(cmap), PNG_PARAMS["heatmap"])).decode()}


def _parse_points(text: str | None, fmt: str):
    if text is None:
        return None
    from runtime.metric import as_points

    if fmt in ("png", "depth16"):
        raise ApiError(422, "bad_format", "known_depths gives metres: ask for format=json, npy, pfm or exr")
    try:
        return as_points(json.loads(text))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ApiError(422, "bad_known_depths", f"known_depths must be a JSON list of [x, y, depth_m]: {exc}") from None
    except MidasOnnxError as exc:
        raise ApiError(422, "bad_known_depths", str(exc)) from None


def _render(result, fmt: str, cmap: int, with_overlay: bool, alpha: float, svc: Service, points=None) -> Response:
    from runtime.depth_files import encode_depth
    from runtime.metric import align, metric_depth

    depth, fit = result.depth, None
    if points is not None:
        try:
            fit = align(result.depth, points)
        except MidasOnnxError as exc:
            raise ApiError(422, "bad_known_depths", str(exc)) from None
        depth = metric_depth(result.depth, fit)
    if fmt in DEPTH_FORMATS:
        try:
            return Response(encode_depth(depth, DEPTH_FORMATS[fmt]), media_type=FORMATS[fmt])
        except MidasOnnxError as exc:
            raise ApiError(422, "format_unavailable", str(exc)) from None
    if fmt == "json":
        body = _summary(result, cmap, svc)
        if with_overlay:
            body["overlay_png_base64"] = base64.b64encode(encode_png(_heatmap(result, cmap, True, alpha))).decode()
        if fit is not None:
            finite = depth[np.isfinite(depth)]
            body["alignment"] = fit.to_dict()
            body["metric_depth_m"] = ({"min": float(finite.min()), "max": float(finite.max()),
                                       "median": float(np.median(finite))} if finite.size else None)
        return JSONResponse(body)
    params = PNG_PARAMS["overlay" if with_overlay else "heatmap"]
    return Response(encode_png(_heatmap(result, cmap, with_overlay, alpha), params), media_type="image/png")


async def _run_job(svc: Service, job, uploads: list[tuple[str, bytes]], cmap: int) -> None:
    """Each image in turn through the same batcher, waiting for room (accepted work is never
    refused for load, nor decoded twice); a bad image is an error entry, not a failed job."""
    job.status = "running"
    try:
        for name, data in uploads:
            try:
                result = await svc.infer(data, name, wait=True)
                job.results.append({"name": name, **await run_in_threadpool(_summary, result, cmap, svc)})
            except ApiError as exc:
                job.results.append({"name": name, "error": {"status": exc.status, "code": exc.code,
                                                            "message": exc.message}})
            job.completed += 1
        svc.jobs.finish(job)
    except Exception as exc:  # pragma: no cover - defensive: a job never dies silently
        log.exception("job %s failed", job.id)
        svc.jobs.finish(job, error=f"{type(exc).__name__}: {exc}")
