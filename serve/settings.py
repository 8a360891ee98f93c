"""Service settings: every bound that keeps a request's bytes and CPU-seconds finite.

One pydantic-settings model for the CLI, ``uvicorn --factory serve.app:app_from_env``, Ray
Serve's own tools and tests. Each field is one setting under one name: the field ``x_y`` is
the flag ``--x-y`` (``midas-onnx serve`` builds its options from these fields) and the
environment variable ``MIDAS_ONNX_X_Y``; a flag wins over the environment, the environment
over the default. Every field is typed and bounded: a value that is not a finite number in
its range (``nan``, ``inf``, a negative size) is refused with one line naming the flag or
the variable it came from (``ServeSettings.load``).

Sizes are in the flags' units (MB, KB) with byte properties beside them; times in seconds.
This module imports neither OpenCV nor the runtime: ``apply_opencv_limit`` must run before
``cv2`` is first imported.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MB, KB = 1024 * 1024, 1024
ENV_PREFIX = "MIDAS_ONNX_"
#: Peak bytes per pixel of one image between decode and answer, charged to the work budget
#: (serve.budget): 29 measured for a 12 MP JPEG answered with an overlay, most of it the
#: float64 copy upstream's pre-processing makes at full size
#: (tests/test_serve_hostile.py::test_many_large_photos_stay_inside_the_work_budget).
BYTES_PER_PIXEL = 32

Size = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(gt=0)]
Count0 = Annotated[int, Field(ge=0)]


def _names(value: object) -> tuple[str, ...]:
    """A comma-separated list (the environment's form) or a sequence (flags, Python)."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(str(item).strip() for item in items if str(item).strip())


def _autoscale(value: str | None) -> str | None:
    if value is not None:
        parse_autoscale(value)  # ValueError: refused
    return value


def _model_entries(value: object) -> tuple[str, ...]:
    """One model (a path) or several: ``PATH`` or ``NAME=PATH`` entries, as a sequence (flags,
    Python) or comma-separated (the environment)."""
    return _names(str(value) if isinstance(value, os.PathLike) else value)


def _model_names(entries: tuple[str, ...]) -> tuple[str, ...]:
    parse_models(entries)  # ValueError: refused
    return entries


Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)]
Models = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_model_entries), AfterValidator(_model_names)]
#: A served model's name: what ``model=`` asks for, /readyz lists and /metrics labels.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENGINES = ("onnxruntime", "openvino", "auto")  # runtime.model.engine_choice's (this module imports no runtime)
Keys = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)]


def _flag(name: str, **extra) -> dict:
    return {"json_schema_extra": {"flag": name, **extra}}


class ServeSettings(BaseSettings):
    """Service limits and tuning (``midas-onnx serve --help`` shows each with its default)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # -- the process -----------------------------------------------------------------------
    model: Models = Field(description="ONNX model file, or NAME=FILE. Repeatable: several models, each with "
                          "its own session and the same limits; a request picks one with model=NAME (default: "
                          "the first; NAME defaults to the file's name without .onnx).")
    engine: Literal[ENGINES] = Field("onnxruntime", description="Inference engine of every model: "  # type: ignore[valid-type]
                                     "onnxruntime, openvino (the openvino extra), or auto (measured once per "
                                     "file and CPU, then cached).", **_flag("--engine", run_option=True))
    input_size: Count | None = Field(None, description="For dynamic-size models: the size their resize rule "
                                     "aims at instead of their own (a multiple of the model's).",
                                     **_flag("--input-size", run_option=True))
    host: str = Field("127.0.0.1", description="Bind address. Beyond loopback, API keys are required "
                      "(or --insecure-no-auth).")
    port: int = Field(8000, ge=0, le=65535, description="Port.")
    workers: Count | None = Field(None, description="Inference workers pulling from the queue (default: CPUs).")
    threads: Count | None = Field(None, description="Inference threads per worker (default: 1 with several "
                                  "workers, else physical cores).")
    colormap: str = Field("inferno", description="OpenCV colormap of heatmaps unless a request asks for another.")
    max_batch: Count = Field(1, description="Images per inference call at most; more only pays with one "
                             "multi-thread worker.")
    max_wait_ms: Rate = Field(10.0, description="How long a worker waits for more images to share its call.")
    queue_size: Count = Field(32, description="Images admitted and not yet in inference; beyond, requests get "
                              "503 + Retry-After before their upload is decoded.")
    quiet: bool = Field(False, description="No access log (one line per request, on by default).")
    drain_timeout: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        30.0, description="On SIGTERM: seconds accepted work may take to finish before exit.")
    retry_after: Count = Field(1, description="Seconds a 503 asks a client to wait (Retry-After).")
    # -- what one request may cost ---------------------------------------------------------
    timeout: Seconds = Field(30.0, description="Seconds per request after its body.")
    max_body_mb: Size = Field(20.0, description="Request body (and WebSocket message) cap.")
    max_pixels: Count = Field(40_000_000, description="Pixel cap, checked from the image header and by "
                              "OpenCV's own decoder limit.")
    max_uploads: Count = Field(32, description="Bodies received at once; beyond: 503.")
    body_timeout: Seconds = Field(30.0, description="Seconds to receive one whole body; slower: 408.")
    send_timeout: Seconds = Field(30.0, description="Seconds a client may take to read one answer or stream "
                                  "message; slower, its connection is closed and what it held given back.")
    limit_concurrency: Count = Field(1000, description="Connections at once (uvicorn's limit); beyond, "
                                     "uvicorn answers 503 at once.")
    max_form_fields: Count0 = Field(8, description="Multipart text fields besides the files.")
    max_field_kb: Size = Field(64.0, description="One multipart text field.")
    max_query_kb: Size = Field(64.0, description="known_depths text.")
    max_known_points: Count = Field(256, description="known_depths points per request.")
    max_work_mb: Size = Field(2048.0, description=f"Bytes the images in process may hold (body + "
                              f"{BYTES_PER_PIXEL} per pixel) until their answer is sent; beyond: 503 "
                              "(a job image waits).")
    # -- jobs ------------------------------------------------------------------------------
    job_ttl: Seconds = Field(600.0, description="Seconds a finished job's result is kept.")
    max_jobs: Count = Field(256, description="Jobs held (queued, running and finished) at once.")
    max_jobs_per_key: Count = Field(64, description="Jobs one API key may hold at once.")
    max_images_per_job: Count = Field(16, description="Images in one job.")
    max_job_mb: Size = Field(512.0, description="Bytes all jobs may hold (uploads waiting + results kept).")
    job_timeout: Seconds = Field(300.0, description="Seconds one job image may take from its turn to its "
                                 "result; beyond, its entry is a timeout error.")
    job_lease: Seconds = Field(15.0, description="With --ray: a running job whose replica has not renewed "
                               "its lease for this long reports its images not done as lost.")
    job_store: Literal["memory", "ray"] = Field("memory", description="Where jobs live: this process, or "
                                                "the named Ray actor (set by --ray).", **_flag(""))
    # -- live streams ----------------------------------------------------------------------
    max_streams: Count = Field(8, description="Live WebSocket streams at once; beyond: closed 1013.")
    max_streams_per_client: Count = Field(2, description="Live streams one client address may hold.")
    stream_idle_timeout: Seconds = Field(60.0, description="Seconds a stream may go without a frame "
                                         "(received or answered; never while one is computed); then it is "
                                         "closed.")
    max_bad_frames: Count = Field(8, description="Frames and messages a stream may send that are refused (not "
                                  "images, too many pixels, text) before it is closed.")
    # -- access control --------------------------------------------------------------------
    api_keys: Keys = Field((), repr=False, description="API keys (environment only: a command line is "
                           "visible to every user of the machine).", **_flag(""))
    api_key_file: Path | None = Field(None, description="API keys, one a line (re-read on SIGHUP or when it "
                                      "changes).")
    key_id_secret: SecretStr = Field(default_factory=lambda: SecretStr(secrets.token_hex(16)),
                                     description="Secret that key ids (logs, metrics) are derived with "
                                     "(environment only; default: random per start).", **_flag(""))
    insecure_no_auth: bool = Field(False, description="Serve beyond loopback without API keys.")
    public_readyz: bool = Field(True, description="/readyz without a key.")
    public_metrics: bool = Field(False, description="/metrics without a key.")
    allowed_hosts: Names = Field((), description="Host header to accept besides loopback names and --host "
                                 "('*': any). Repeatable.", **_flag("--allowed-host"))
    cors_origins: Names = Field((), description="Web origin allowed to call the API. Repeatable.",
                                **_flag("--cors-origin"))
    key_rate: Rate = Field(0.0, description="Requests per second per key (0: no limit).")
    key_burst: Count0 = Field(0, description="Requests a key may make at once before --key-rate applies "
                              "(0: twice the rate, at least 1).")
    key_concurrency: Count0 = Field(0, description="Requests in progress per key (0: no limit).")
    refusal_rate: Rate = Field(2.0, description="Refused requests (4xx) per second a client address may "
                               "cause once its burst is spent; beyond, its requests wait and get 429 "
                               "(0: no limit).")
    refusal_burst: Count = Field(20, description="Refused requests a client may have at once.")
    # -- Ray Serve -------------------------------------------------------------------------
    ray: bool = Field(False, description="Serve on Ray Serve: replicas of the same app, jobs any replica "
                      "answers (extra: ray).")
    address: str | None = Field(None, description="With --ray: join this Ray cluster (default: start a "
                                "local Ray).")
    replicas: Count = Field(2, description="With --ray: replicas, 1 worker each.")
    autoscale: Annotated[str | None, AfterValidator(_autoscale)] = Field(
        None, description="With --ray: MIN:MAX replicas, autoscaled on ongoing requests.")

    @model_validator(mode="after")
    def _one_image_fits(self) -> "ServeSettings":
        one = self.max_body_bytes + self.max_pixels * BYTES_PER_PIXEL
        if self.max_work_bytes < one:
            raise ValueError(f"--max-work-mb {self.max_work_mb:,g} is below what one image may take "
                             f"({one / MB:,.0f} MB: the body limit plus {BYTES_PER_PIXEL} bytes for each of "
                             f"--max-pixels); raise it or lower those")
        if not self.ray and (self.address or self.autoscale):
            raise ValueError("--address and --autoscale need --ray")
        return self

    # -- derived values ----------------------------------------------------------------------
    @property
    def models(self) -> dict[str, Path]:
        """name -> model file, in the order given (the first is the default)."""
        return parse_models(self.model)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MB)

    @property
    def max_work_bytes(self) -> int:
        return int(self.max_work_mb * MB)

    @property
    def max_job_bytes(self) -> int:
        return int(self.max_job_mb * MB)

    @property
    def max_field_bytes(self) -> int:
        return int(self.max_field_kb * KB)

    @property
    def max_query_bytes(self) -> int:
        return int(self.max_query_kb * KB)

    @property
    def access_log(self) -> bool:
        return not self.quiet

    @property
    def inference_workers(self) -> int:
        return self.workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 1)

    @property
    def inference_threads(self) -> int | None:
        return self.threads if self.threads is not None else (1 if self.inference_workers > 1 else None)

    @property
    def autoscale_range(self) -> tuple[int, int] | None:
        return None if self.autoscale is None else parse_autoscale(self.autoscale)

    def replace(self, **changes) -> "ServeSettings":
        """A copy with ``changes``, validated like the original (the environment is not read again)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @classmethod
    def load(cls, **flags) -> "ServeSettings":
        """Settings from ``flags`` (None: not given), else the environment, else the defaults.
        A bad value is one ``SettingsError`` line naming the flag or variable it came from."""
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise SettingsError(describe(exc, set(given))) from None

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def flag_name(cls, field: str) -> str | None:
        """The CLI flag of ``field``; None for the settings given by the environment only."""
        extra = cls.model_fields[field].json_schema_extra or {}
        flag = extra.get("flag", "--" + field.replace("_", "-"))  # type: ignore[union-attr]
        return flag or None


class SettingsError(ValueError):
    """A setting that cannot be used, in one line."""


def describe(exc: ValidationError, flags: set[str]) -> str:
    """The first problem of ``exc`` as one line naming where the value came from."""
    problems = exc.errors()
    first = problems[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    if field == "model" and first["type"] == "missing":
        line = f"no model: pass --model or set {ServeSettings.env_name('model')}"
    elif field:
        value = "" if field in ("api_keys", "key_id_secret") else str(first.get("input"))[:80]
        where = (f"{ServeSettings.flag_name(field)} {value}" if field in flags else
                 f"{ServeSettings.env_name(field)}={value!r}" if value else ServeSettings.env_name(field))
        line = f"{where.rstrip()}: {message[:1].lower()}{message[1:]}"
    else:
        line = message
    return line + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")


def parse_models(entries: tuple[str, ...]) -> dict[str, Path]:
    """``PATH`` or ``NAME=PATH`` entries -> {name: path}; ValueError for a bad or repeated name."""
    models: dict[str, Path] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep:
            name, path = Path(entry).name.removesuffix(".onnx"), entry
        if not MODEL_NAME.fullmatch(name):
            raise ValueError(f"model name {name[:80]!r}: use letters, digits, '.', '_' or '-' (at most 64), "
                             "as NAME=FILE")
        if name in models:
            raise ValueError(f"two models named {name!r}: name them, as NAME=FILE")
        models[name] = Path(path)
    if not models:
        raise ValueError("no model given")
    return models


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` -> (MIN, MAX) with 1 <= MIN <= MAX; ValueError otherwise."""
    try:
        low, high = (int(n) for n in str(text).split(":"))
    except ValueError:
        low = high = 0
    if not 1 <= low <= high:
        raise ValueError("must be MIN:MAX with 1 <= MIN <= MAX")
    return low, high


def apply_opencv_limit(settings: ServeSettings) -> None:
    """Make OpenCV's own decoder limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, read once when ``cv2``
    is imported) the service's ``max_pixels``, so each decoder refuses from its own header
    what the service must not decode; the header reader (runtime.inputs.image_header) is then only
    the cost estimate. Must run before anything imports ``cv2``; later, the limit in force is
    whatever the first import saw (tests that run the app inside their own process)."""
    if "cv2" not in sys.modules:
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(settings.max_pixels)
