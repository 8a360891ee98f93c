"""``midas-onnx serve``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import MODEL_HELP, default_model, require_extra


@click.command("serve")
@click.option("--model", type=click.Path(path_type=Path), default=None, help=MODEL_HELP)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads (default: physical cores).")
@click.option("--max-batch", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="How long a request waits for others to share its batch.")
@click.option("--queue-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images allowed to wait; beyond it requests get 503 + Retry-After.")
@click.option("--timeout", "request_timeout_s", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=20.0, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True)
@click.option("--quiet", is_flag=True, help="No access log (one line per request, on by default).")
@click.option("--job-ttl", "job_ttl_s", type=click.FloatRange(min=0.1), default=600.0, show_default=True,
              help="Seconds a finished job's result is kept.")
def command(model: Path, host: str, port: int, threads: int | None, max_batch: int, max_wait_ms: float,
            queue_size: int, request_timeout_s: float, max_body_mb: float, max_pixels: int, quiet: bool,
            job_ttl_s: float) -> None:
    """Serve depth heatmaps over HTTP, with an upload page at / and the API under /v1."""
    require_extra("serve", "fastapi", "uvicorn", "multipart", "prometheus_client")
    import uvicorn

    from runtime.session import missing_model_message
    from serve import ServeSettings, create_app

    model = default_model(model)
    if not model.is_file():
        raise click.ClickException(missing_model_message(model))
    settings = ServeSettings(model=model, threads=threads, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             queue_size=queue_size, request_timeout_s=request_timeout_s,
                             max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=max_pixels, job_ttl_s=job_ttl_s,
                             access_log=not quiet)
    _log_to_stderr()
    _limit_malloc_arenas()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)


def _log_to_stderr() -> None:
    """The service's own lines (access log, load errors) on stderr, one line each."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("midas_onnx")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; with a pool of decode
    threads handling multi-megabyte images, freed memory stays scattered across them and RSS
    creeps up. Capping arenas (as MALLOC_ARENA_MAX does) keeps it flat. No-op off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
