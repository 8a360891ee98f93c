"""Service settings: every bound that keeps a request's bytes and CPU-seconds finite.

One dataclass for the CLI, ``uvicorn --factory serve.app:app_from_env`` and tests. Settings
come from flags (CLI) and from the environment (``MIDAS_ONNX_<NAME>``, e.g.
``MIDAS_ONNX_MAX_BODY_MB=5``), flags winning; ``ENV`` lists every name.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

MB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Service limits and tuning (see the CLI's --help for each)."""

    model: Path
    threads: int | None = None  # per inference worker; default 1 with several workers
    workers: int | None = None  # inference workers pulling from the queue; default: CPUs
    colormap: str = "inferno"
    max_body_bytes: int = 20 * MB
    max_pixels: int = 40_000_000
    max_batch: int = 1  # images per inference call: 1 with one-thread workers (batching only waits; serve/batcher.py)
    max_wait_ms: float = 10.0
    queue_size: int = 32
    request_timeout_s: float = 30.0
    job_ttl_s: float = 600.0
    max_jobs: int = 256
    max_images_per_job: int = 16
    max_job_bytes: int = 512 * MB  # uploads waiting and results held, all jobs together
    max_work_bytes: int = 2048 * MB  # bodies and pixels of images being decoded, inferred and rendered (serve.budget)
    retry_after_s: int = 1
    access_log: bool = True
    max_uploads: int = 32  # request bodies being received at once
    body_timeout_s: float = 30.0  # time to receive one whole body
    max_form_fields: int = 8  # multipart text fields (besides files)
    max_field_bytes: int = 64 * 1024  # one multipart text field
    max_known_points: int = 256
    max_query_bytes: int = 64 * 1024  # known_depths text
    drain_timeout_s: float = 30.0
    job_store: str = "memory"  # "memory": this process; "ray": the named Ray actor (serve/ray_jobs.py)
    job_lease_s: float = 15.0  # ray store: a running job whose owner has not renewed it for this long has failed images
    # access control (serve/access.py)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: Path | None = None
    insecure_no_auth: bool = False
    public_readyz: bool = True
    public_metrics: bool = False
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    key_rate: float = 0.0  # requests per second per key (0: no limit)
    key_burst: int = 0  # bucket size (0: max(1, 2 x rate))
    key_concurrency: int = 0  # requests in progress per key (0: no limit)
    refusal_rate: float = 2.0  # refused requests per second per client address, sustained (0: no limit; serve/refusals.py)
    refusal_burst: int = 20  # refused requests a client may have before it is slowed

    def __post_init__(self) -> None:
        from .budget import BYTES_PER_PIXEL

        one = self.max_body_bytes + self.max_pixels * BYTES_PER_PIXEL
        if self.max_work_bytes < one:
            raise ValueError(f"--max-work-mb {self.max_work_bytes / MB:,.0f} is below what one image may take "
                             f"({one / MB:,.0f} MB: the body limit plus {BYTES_PER_PIXEL} bytes for each of "
                             f"--max-pixels); raise it or lower those")

    @property
    def inference_workers(self) -> int:
        return self.workers or max(1, len(os.sched_getaffinity(0)))

    @property
    def inference_threads(self) -> int | None:
        return self.threads if self.threads is not None else (1 if self.inference_workers > 1 else None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given) -> "ServeSettings":
        """Settings from ``given`` (flags; None means not given), else the environment, else
        the defaults. A bad environment value is a ValueError naming the variable."""
        environ = os.environ if environ is None else environ
        values = {k: v for k, v in given.items() if v is not None}
        for name, (fld, parse) in ENV.items():
            if fld not in values and name in environ:
                try:
                    values[fld] = parse(environ[name])
                except ValueError as exc:
                    raise ValueError(f"{name}={environ[name]!r}: {exc}") from None
        if "model" not in values:
            raise ValueError("no model: pass --model or set MIDAS_ONNX_MODEL")
        return dataclasses.replace(cls(model=Path(values.pop("model"))), **values)


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise ValueError("must be positive")
        return value
    return parse


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


_int, _float = _positive(int), _positive(float)
# environment name -> (field, parser); sizes in MB as the flags give them
ENV: dict[str, tuple[str, Callable[[str], object]]] = {
    "MIDAS_ONNX_MODEL": ("model", Path),
    "MIDAS_ONNX_THREADS": ("threads", _int),
    "MIDAS_ONNX_WORKERS": ("workers", _int),
    "MIDAS_ONNX_COLORMAP": ("colormap", str),
    "MIDAS_ONNX_MAX_BODY_MB": ("max_body_bytes", lambda t: int(_float(t) * MB)),
    "MIDAS_ONNX_MAX_PIXELS": ("max_pixels", _int),
    "MIDAS_ONNX_MAX_BATCH": ("max_batch", _int),
    "MIDAS_ONNX_MAX_WAIT_MS": ("max_wait_ms", float),
    "MIDAS_ONNX_QUEUE_SIZE": ("queue_size", _int),
    "MIDAS_ONNX_TIMEOUT": ("request_timeout_s", _float),
    "MIDAS_ONNX_JOB_TTL": ("job_ttl_s", _float),
    "MIDAS_ONNX_MAX_JOB_MB": ("max_job_bytes", lambda t: int(_float(t) * MB)),
    "MIDAS_ONNX_MAX_WORK_MB": ("max_work_bytes", lambda t: int(_float(t) * MB)),
    "MIDAS_ONNX_MAX_UPLOADS": ("max_uploads", _int),
    "MIDAS_ONNX_BODY_TIMEOUT": ("body_timeout_s", _float),
    "MIDAS_ONNX_MAX_KNOWN_POINTS": ("max_known_points", _int),
    "MIDAS_ONNX_DRAIN_TIMEOUT": ("drain_timeout_s", float),
    "MIDAS_ONNX_JOB_LEASE": ("job_lease_s", _float),
    "MIDAS_ONNX_QUIET": ("access_log", lambda t: not _bool(t)),
    "MIDAS_ONNX_API_KEYS": ("api_keys", _list),
    "MIDAS_ONNX_API_KEY_FILE": ("api_key_file", Path),
    "MIDAS_ONNX_INSECURE_NO_AUTH": ("insecure_no_auth", _bool),
    "MIDAS_ONNX_PUBLIC_METRICS": ("public_metrics", _bool),
    "MIDAS_ONNX_ALLOWED_HOSTS": ("allowed_hosts", _list),
    "MIDAS_ONNX_CORS_ORIGINS": ("cors_origins", _list),
    "MIDAS_ONNX_KEY_RATE": ("key_rate", float),
    "MIDAS_ONNX_KEY_CONCURRENCY": ("key_concurrency", int),
    "MIDAS_ONNX_REFUSAL_RATE": ("refusal_rate", float),
    "MIDAS_ONNX_REFUSAL_BURST": ("refusal_burst", _int),
}
