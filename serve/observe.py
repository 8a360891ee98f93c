"""What a deployment watches: Prometheus metrics, and one access-log line per request.

``Observe`` is the outermost middleware of the app (pure ASGI, so it sees every response,
including the 500 it makes itself of an unexpected exception: that one is logged once with
its traceback and answered in the error envelope). Access-log paths are printed as the
client sent them, percent-encoded, with every byte outside printable ASCII escaped, so a
request line cannot forge log lines.
"""

from __future__ import annotations

import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from .errors import envelope
from .flow import SendTimeout

log = logging.getLogger("midas_onnx.serve")
access_log = logging.getLogger("midas_onnx.access")
_STAGE_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.requests = Counter("midas_requests_total", "HTTP requests", ["route", "status", "key"], registry=r)
        self.latency = Histogram("midas_request_seconds", "Request latency", ["route"], registry=r,
                                 buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.in_flight = Gauge("midas_requests_in_flight", "Requests being handled", registry=r)
        self.queue_depth = Gauge("midas_queue_depth", "Images admitted and not yet in inference", registry=r)
        self.batch_size = Histogram("midas_batch_size", "Images per inference call", registry=r,
                                    buckets=(1, 2, 3, 4, 6, 8, 16))
        self.stage = Histogram("midas_stage_seconds", "Time per image in each stage", ["stage"], registry=r,
                               buckets=_STAGE_BUCKETS)
        self.jobs = Gauge("midas_jobs", "Jobs held, by state", ["state"], registry=r)
        self.jobs_bytes = Gauge("midas_jobs_bytes", "Bytes held by jobs (uploads waiting, results kept)", registry=r)
        self.work_bytes = Gauge("midas_work_bytes", "Bytes charged to images in process (serve.budget)", registry=r)
        self.refusals_held = Gauge("midas_refusals_held", "429 too_many_refusals answers being held back "
                                   "(serve.refusals)", registry=r)
        self.refused = Counter("midas_refused_total", "Requests refused by access control or limits",
                               ["reason", "key"], registry=r)
        self.stream_connections = Gauge("midas_stream_connections", "Live WebSocket streams open", registry=r)
        self.stream_frames = Counter("midas_stream_frames_total", "Stream frames by outcome (sent, dropped_replaced, "
                                     "dropped_busy, error)", ["outcome"], registry=r)
        self.model_info = Gauge("midas_model_info", "Each served model (value 1): its name (what model= asks "
                                "for), id, output kind, engine, precision and input size",
                                ["model", "id", "output", "engine", "precision", "input_size"], registry=r)
        self.model_images = Counter("midas_model_images_total", "Images inferred, by model", ["model"], registry=r)
        self.model_inference = Histogram("midas_model_inference_seconds", "Inference time per call, by model",
                                         ["model"], registry=r, buckets=_STAGE_BUCKETS)
        self.stream_latency = Histogram("midas_stream_frame_seconds", "Frame arrival to heatmap sent", registry=r,
                                        buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

    def observe(self, name: str, value: float, model: str | None = None) -> None:
        """The batchers' hook (``model``: whose): batch_size, queue_seconds, decode_seconds,
        inference_seconds; and the flow's render_seconds."""
        if name == "batch_size":
            self.batch_size.observe(value)
            if model is not None:
                self.model_images.labels(model).inc(value)
            return
        self.stage.labels(name.removesuffix("_seconds")).observe(value)
        if name == "inference_seconds" and model is not None:
            self.model_inference.labels(model).observe(value)

    def describe(self, model: dict) -> None:
        """A loaded model's ``midas_model_info`` line (serve.models.ServedModel.describe)."""
        self.model_info.labels(model["name"], model["id"], model["output"], model["engine"], model["precision"],
                               model["input_size"]).set(1)


def printable_path(scope: dict) -> str:
    return printable(scope.get("raw_path") or scope.get("path", "").encode("utf-8", "replace"))


def printable(raw: bytes, limit: int = 512) -> str:
    """``raw`` with every byte outside printable ASCII (and the space) percent-escaped."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E else f"%{b:02X}" for b in raw[:limit])


class Observe:
    """Counts, times and logs every HTTP request; turns an escaped exception into a 500."""

    def __init__(self, app, metrics: Metrics, access_log_on: bool) -> None:
        self.app, self.metrics, self.access_log_on = app, metrics, access_log_on

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = {"status": 0, "bytes": 0}

        async def observed_send(message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        except SendTimeout as exc:  # the answer was cut: the connection closes (uvicorn's own line is left out)
            log.info("%s %s %s: %s; connection closed", _client(scope), scope.get("method"), printable_path(scope), exc)
        except Exception:  # noqa: BLE001 - the one place an unexpected error is reported
            incident = uuid.uuid4().hex[:12]
            log.exception("unexpected error %s in %s %s", incident, scope.get("method"), printable_path(scope))
            if state["status"] == 0:
                await envelope(500, "internal_error", f"unexpected server error (incident {incident}, logged)")(
                    scope, receive, observed_send)
            else:
                state["status"] = 500
        finally:
            self.metrics.in_flight.dec()
            self._record(scope, state, time.perf_counter() - started)

    def _record(self, scope: dict, state: dict, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        key = scope.get("midas.key_id") or "-"
        status = state["status"] or 499  # no response: the client went away first
        self.metrics.requests.labels(route, str(status), key).inc()
        self.metrics.latency.labels(route).observe(seconds)
        if self.access_log_on:  # client, method, path, status, ms, bytes[, key id]
            access_log.info("%s %s %s %d %.1fms %dB%s", _client(scope), scope.get("method"), printable_path(scope), status,
                            seconds * 1000, state["bytes"], f" key={key}" if key != "-" else "")


def _client(scope: dict) -> str:
    """The client's address as the log shows it (from X-Forwarded-For it may be anything)."""
    return printable(str((scope.get("client") or ("-",))[0]).encode(), 64)

