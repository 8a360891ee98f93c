"""The HTTP service, built by ``create_app(settings)`` so the CLI, ``uvicorn --factory`` and
tests run the same app.

Endpoints: ``/`` (upload page), ``/live`` (webcam page), ``/healthz``, ``/readyz``,
``POST /v1/depth``, ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``/v1/stream`` (WebSocket),
``/metrics``. The model loads once, in a background
thread at start-up; inference runs in worker threads fed by the micro-batcher; requests are
admitted before they are decoded; decoding and PNG encoding run in worker threads; the event
loop only moves bytes. Layers, outside in: ``Observe`` (metrics, access log, 500 envelope),
``AccessControl`` (keys, hosts, origins, per-key limits), then the routers over ``Service``.

    uvicorn --factory serve.app:app_from_env      # settings from MIDAS_ONNX_* (serve.settings)
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from . import errors
from .access import AccessControl, AccessPolicy
from .lifecycle import install_drain, prepare_process, redact_keys
from .observe import Observe
from .routes import depth_router, health_router, jobs_router
from .service import Service
from .settings import ServeSettings, SettingsError
from .stream import stream_router


def create_app(settings: ServeSettings) -> FastAPI:
    """The service's FastAPI app for ``settings``; nothing loads until it starts.

    The model loads, the drain handler is installed and the key file (if any) starts being
    watched in the app's lifespan, so building an app is cheap and the model loads only
    once an ASGI server starts it.
    """
    svc = Service(settings)
    policy = AccessPolicy(settings, svc.metrics)
    svc.metrics.refusals_held.set_function(lambda: policy.refusals.held)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        redact_keys()  # whoever runs the app: keys stay out of the server's request lines
        await svc.start()
        install_drain(svc.drain)
        policy.start_reloading()
        yield
        policy.stop_reloading()
        await svc.stop()

    app = FastAPI(title="midas-onnx", version=_version(), lifespan=lifespan)
    app.state.service = svc
    app.state.access = policy
    errors.install(app)
    for router in (health_router(svc, lambda: policy.auth_on), depth_router(svc), jobs_router(svc), stream_router(svc)):
        app.include_router(router)
    app.add_middleware(AccessControl, policy=policy)
    app.add_middleware(Observe, metrics=svc.metrics, access_log_on=settings.access_log)  # added last: outermost
    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory serve.app:app_from_env``: the CLI's service, with settings from the
    environment (MIDAS_ONNX_MODEL, MIDAS_ONNX_MAX_BODY_MB, ...; see serve.settings), the
    same logging and malloc-arena cap. Keys are required off loopback as with the CLI; the
    bind address is uvicorn's here, so that check is the CLI's alone (see serve.access). A bad
    setting ends the process with one line (uvicorn would print a traceback).

    OpenCV's decoder limit cannot follow ``MIDAS_ONNX_MAX_PIXELS`` here (uvicorn imported this
    module, and so cv2, first): set ``OPENCV_IO_MAX_IMAGE_PIXELS`` to the same value beside it."""
    try:
        settings = ServeSettings.load()
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    prepare_process()
    return create_app(settings)


def run_uvicorn(app: FastAPI, settings: ServeSettings) -> None:
    """The CLI's server: uvicorn on ``settings.host:port``. ``ws_max_size``: uvicorn refuses
    a larger WebSocket message before buffering it (its own default is 16 MiB), the same cap
    as an HTTP body; no permessage-deflate (a compressed message inflates on the event loop,
    up to a thousandfold, and JPEG frames gain nothing); ``limit_concurrency`` bounds the
    connections (and so what their buffers hold)."""
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                ws_max_size=settings.max_body_bytes, ws_per_message_deflate=False,
                limit_concurrency=settings.limit_concurrency)


def _version() -> str:
    from midas_onnx import __version__

    return __version__
