"""The one request flow, for an HTTP request, a job image and a stream frame alike:

1. **cost**: the pixels its header declares (``runtime.inputs.images.check_header``: bounded
   work, refuses bombs, floating-point files and unknown formats before anything is held);
2. **charge**: its body plus ``BYTES_PER_PIXEL`` a pixel against the work budget
   (``--max-work-mb``); a request that does not fit gets 503 busy at once, a job image
   waits its turn (accepted work is never refused for load);
3. **admit**: a place in the inference queue (``serve.batcher``; 503 busy when full, a job
   image waits);
4. **decode** on the batcher's decode executor; 5. **infer**; 6. **render** (PNG, JSON, a
   depth file, a stream's JPEG, a job's summary: the caller says which) on the render
   executor;
7. **send**: an HTTP answer is an ``Answer``, which keeps what it still has to send charged
   until its last byte is written, and gives up on a client that takes longer than
   ``--send-timeout`` to read it;
8. **release**: the charge comes back when its owner lets go and no thread still works for
   it (serve.budget), so a cancelled request never frees memory a thread still holds.

Readiness (loading, draining) is checked where work is accepted (the routes, the stream's
handshake), never here: accepted requests, job images and frames in flight finish during a
drain. A request's whole flow has ``--timeout`` (504), a job image ``--job-timeout``.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from runtime import ImageError, ImageTooLarge
from runtime.inputs.images import check_header, decode

from .batcher import QueueFull, WorkerDied
from .budget import Budget, Charge, in_thread
from .errors import ApiError
from .models import ServedModel
from .settings import BYTES_PER_PIXEL, ServeSettings

T = TypeVar("T")
CHUNK = 256 * 1024  # bytes per body message: what a client that does not read can leave in our buffers


class Flow:
    """Steps 1-6 and 8 above; ``Answer`` is step 7."""

    def __init__(self, settings: ServeSettings, observe: Callable[[str, float], None]) -> None:
        self.settings = settings
        self.budget = Budget(settings.max_work_bytes)
        self._renderers = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="render")
        self._observe = observe

    def close(self) -> None:
        self._renderers.shutdown(wait=False, cancel_futures=True)

    async def run(self, data: bytes, name: str, render: Callable[[object], T], model: ServedModel, *,
                  job: bool = False, request: Request | None = None) -> tuple[T, Charge]:
        """``render(DepthResult)`` of the image ``data`` through ``model``, with its charge:
        the caller sends what it rendered, then releases the charge (an ``Answer`` does).
        Every model shares this flow's budget. ``job``: wait for room instead of 503.
        ``request``: its client leaving ends the flow (499)."""
        s = self.settings
        try:
            pixels = check_header(data, name, s.max_pixels)
        except ImageError as exc:
            raise image_error(exc) from None
        amount, deadline = len(data) + pixels * BYTES_PER_PIXEL, s.job_timeout if job else s.timeout
        try:
            async with asyncio.timeout(deadline):
                if job:
                    await self.budget.take(amount)
                elif not self.budget.try_take(amount):
                    raise self.busy()
                charge = Charge(self.budget, amount)
                try:
                    result = await _unless_gone(self._infer(data, name, charge, job, model), request)
                    del data
                    started = time.perf_counter()
                    rendered = await in_thread(self._renderers, render, result, charges=(charge,))
                    self._observe("render_seconds", time.perf_counter() - started)
                except BaseException:
                    charge.release()
                    raise
        except TimeoutError:
            raise ApiError(504, "timeout", f"no result within {deadline:g} s") from None
        return rendered, charge

    async def _infer(self, data: bytes, name: str, charge: Charge, job: bool, model: ServedModel):
        batcher = model.batcher
        if batcher is None:
            raise ApiError(503, "loading", "the model is still loading", retry_after=self.settings.retry_after)
        try:
            return await batcher.run(lambda: decode(data, name, self.settings.max_pixels), charge, wait=job)
        except ImageError as exc:
            raise image_error(exc) from None
        except QueueFull:
            raise ApiError(503, "busy", "the inference queue is full; retry shortly",
                           retry_after=self.settings.retry_after) from None
        except WorkerDied as exc:
            raise ApiError(503, "worker_died", f"inference stopped: {exc}") from None

    def busy(self) -> ApiError:
        return ApiError(503, "busy", f"the images in process hold {self.budget.held / 2**20:,.0f} MB of "
                        f"{self.budget.limit / 2**20:,.0f} MB; retry shortly", retry_after=self.settings.retry_after)


def image_error(exc: ImageError) -> ApiError:
    """An image refused from its header or by its decoder, in the service's terms."""
    if isinstance(exc, ImageTooLarge):
        return ApiError(413, "too_many_pixels", str(exc))
    return ApiError(422, "bad_image", str(exc))


async def _unless_gone(work, request: Request | None):
    """``await work``, unless the client of ``request`` disconnects first (499)."""
    if request is None:
        return await work
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            raise ApiError(499, "client_gone", "the client disconnected")
        return task.result()
    finally:  # whatever ended the wait (even this handler's own cancellation), nothing is left behind
        for t in (task, gone):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read by then, so the next ASGI message
    can only be the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class SendTimeout(Exception):
    """A client took longer than --send-timeout to read its answer; its connection is closed."""


class Answer(Response):
    """An HTTP answer sent in ``CHUNK``-byte messages (uvicorn waits for each to drain into
    the socket before taking the next), whose ``charge`` is released after the last one, or
    when the client has not read it all within ``send_timeout`` seconds (``SendTimeout``:
    the connection is closed). ``parts``: the body as byte strings sent one after another,
    never joined (a finished job's cached results are copied a chunk at a time only)."""

    def __init__(self, parts: bytes | Iterable[bytes], media_type: str, send_timeout: float,
                 charge: Charge | None = None, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        self.parts = [parts] if isinstance(parts, (bytes, bytearray, memoryview)) else list(parts)
        self.charge, self.send_timeout = charge, send_timeout
        self.status_code, self.media_type, self.background = status_code, media_type, None
        self.body = b""
        length = sum(len(p) for p in self.parts)
        self.raw_headers = [(b"content-type", media_type.encode("latin-1")),
                            (b"content-length", str(length).encode())]
        self.raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        if charge is not None:
            charge.shrink(length)

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with asyncio.timeout(self.send_timeout):
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                for part in self.parts:
                    view = memoryview(part)
                    for at in range(0, len(view), CHUNK):  # bytes: Ray Serve's proxy pickles each message
                        await send({"type": "http.response.body", "body": bytes(view[at:at + CHUNK]),
                                    "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            raise SendTimeout(f"the client did not read its answer within {self.send_timeout:g} s") from None
        finally:
            self.parts = []
            if self.charge is not None:
                self.charge.release()


def json_answer(body: dict, send_timeout: float, charge: Charge | None = None, status_code: int = 200,
                headers: dict[str, str] | None = None) -> Answer:
    return Answer(json.dumps(body).encode(), "application/json", send_timeout, charge, status_code, headers)
