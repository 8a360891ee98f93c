"""``midas-onnx serve``: flags over ``serve.ServeSettings`` (environment MIDAS_ONNX_* fills
what a flag does not give; serve.settings.ENV lists the names)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import MODEL_HELP, default_model, require_extra

_INT1 = click.IntRange(min=1)
_POS = click.FloatRange(min=0, min_open=True)


@click.command("serve")
@click.option("--model", type=click.Path(path_type=Path), default=None, help=MODEL_HELP + " Env: MIDAS_ONNX_MODEL.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address. Beyond loopback, API keys are required (or --insecure-no-auth).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=_INT1, default=None, help="Inference workers pulling from the queue (default: CPUs).")
@click.option("--threads", type=_INT1, default=None,
              help="Inference threads per worker (default: 1 with several workers, else physical cores).")
@click.option("--max-batch", type=_INT1, default=None, help="Images per inference call at most; more only pays with one multi-thread worker [1].")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=None,
              help="How long a worker waits for more images to share its call [10].")
@click.option("--queue-size", type=_INT1, default=None,
              help="Images allowed to wait; beyond it requests get 503 + Retry-After [32].")
@click.option("--timeout", "request_timeout_s", type=_POS, default=None, help="Seconds per request after its body [30].")
@click.option("--max-body-mb", type=_POS, default=None, help="Request body cap [20].")
@click.option("--max-pixels", type=_INT1, default=None, help="Pixel cap, checked from the image header [40000000].")
@click.option("--max-uploads", type=_INT1, default=None, help="Bodies received at once; beyond: 503 [32].")
@click.option("--body-timeout", "body_timeout_s", type=_POS, default=None, help="Seconds to receive one body [30].")
@click.option("--max-known-points", type=_INT1, default=None, help="known_depths points per request [256].")
@click.option("--job-ttl", "job_ttl_s", type=_POS, default=None, help="Seconds a finished job's result is kept [600].")
@click.option("--max-job-mb", type=_POS, default=None, help="Bytes all jobs may hold (uploads + results) [512].")
@click.option("--max-work-mb", type=_POS, default=None,
              help="Bytes the images in process may hold (body + 32 per pixel); beyond: 503 [2048].")
@click.option("--drain-timeout", "drain_timeout_s", type=click.FloatRange(min=0), default=None,
              help="On SIGTERM: seconds accepted work may take to finish before exit [30].")
@click.option("--quiet", is_flag=True, default=None, help="No access log (one line per request, on by default).")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="API keys, one a line (re-read on SIGHUP or when it changes). Env: MIDAS_ONNX_API_KEYS=k1,k2.")
@click.option("--insecure-no-auth", is_flag=True, default=None, help="Serve beyond loopback without API keys.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Host header to accept besides loopback names and --host ('*': any). Repeatable.")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Web origin allowed to call the API. Repeatable.")
@click.option("--key-rate", type=click.FloatRange(min=0), default=None, help="Requests per second per key (0: no limit).")
@click.option("--key-concurrency", type=click.IntRange(min=0), default=None,
              help="Requests in progress per key (0: no limit).")
@click.option("--refusal-rate", type=click.FloatRange(min=0), default=None,
              help="Refused requests (4xx) per second a client address may cause once its burst is spent; "
                   "beyond, its requests wait and get 429 (0: no limit) [2].")
@click.option("--refusal-burst", type=_INT1, default=None, help="Refused requests a client may have at once [20].")
@click.option("--public-metrics", is_flag=True, default=None, help="/metrics without a key.")
@click.option("--ray", "use_ray", is_flag=True, default=False,
              help="Serve on Ray Serve: replicas of the same app, jobs any replica answers (extra: ray).")
@click.option("--address", default=None, help="With --ray: join this Ray cluster (default: start a local Ray).")
@click.option("--replicas", type=_INT1, default=2, show_default=True, help="With --ray: replicas, 1 worker each.")
@click.option("--autoscale", default=None, metavar="MIN:MAX", help="With --ray: autoscale on ongoing requests.")
def command(host: str, port: int, model: Path | None, quiet: bool | None, max_body_mb: float | None,
            max_job_mb: float | None, max_work_mb: float | None, allowed_hosts: tuple[str, ...],
            cors_origins: tuple[str, ...],
            use_ray: bool, address: str | None, replicas: int, autoscale: str | None, **given) -> None:
    """Serve depth heatmaps over HTTP, with an upload page at / and the API under /v1."""
    require_extra("serve", "fastapi", "uvicorn", "multipart", "prometheus_client")
    if use_ray:
        require_extra("ray", "ray")
    elif address or autoscale:
        raise click.UsageError("--address and --autoscale need --ray")
    scale = None
    if autoscale:
        from serve.ray_deploy import parse_autoscale

        try:
            scale = parse_autoscale(autoscale)
        except ValueError:
            raise click.BadParameter("MIN:MAX with 1 <= MIN <= MAX", param_hint="--autoscale") from None
    import uvicorn

    from runtime.session import missing_model_message
    from serve import ServeSettings, create_app
    from serve.access import bind_refusal, is_loopback, keys_in
    from serve.lifecycle import prepare_process

    mb = 1024 * 1024
    given |= {"access_log": None if quiet is None else not quiet,
              "max_body_bytes": int(max_body_mb * mb) if max_body_mb else None,
              "max_job_bytes": int(max_job_mb * mb) if max_job_mb else None,
              "max_work_bytes": int(max_work_mb * mb) if max_work_mb else None,
              "cors_origins": cors_origins or None,
              "allowed_hosts": (allowed_hosts + (() if is_loopback(host) or host in ("0.0.0.0", "::") else (host,)))
              or None}
    try:
        settings = ServeSettings.from_env(model=str(default_model(model)) if model or _no_env_model() else None,
                                          **given)
        refusal = bind_refusal(host, settings, keys_in(settings))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if refusal:
        raise click.ClickException(refusal)
    if not settings.model.is_file():
        raise click.ClickException(missing_model_message(settings.model))
    prepare_process()
    if use_ray:
        from serve.ray_deploy import run_on_ray

        run_on_ray(settings, address=address, replicas=replicas, autoscale=scale, host=host, port=port)
        return
    # ws_max_size: uvicorn refuses a larger WebSocket message before buffering it (its own
    # default is 16 MiB), the same cap as an HTTP body
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False,
                ws_max_size=settings.max_body_bytes)


def _no_env_model() -> bool:
    import os

    return "MIDAS_ONNX_MODEL" not in os.environ
