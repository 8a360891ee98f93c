"""Process set-up shared by ``midas-onnx serve`` and ``uvicorn --factory serve.app:app_from_env``,
and the graceful SIGTERM drain, so both start and stop the same service.

Drain: uvicorn's own SIGTERM handling closes the listening socket at once, so clients of a
terminating pod get connection errors. Instead, SIGTERM starts ``Service.drain`` (readyz 503
at once, new work 503 + Retry-After, accepted work finishes for up to --drain-timeout), and
only then asks uvicorn to exit, which it does with status 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import re
import signal
import sys
import threading

log = logging.getLogger("midas_onnx.serve")
_prepared = False
# a key sent as ``?key=`` (the WebSocket's browser-less way): its value, up to the next
# parameter, quote or space
_QUERY_KEY = re.compile(r"([?&]key=)[^&\s\"']*")


class RedactKeys(logging.Filter):
    """Leaves ``?key=`` values out of a record's message: uvicorn logs every WebSocket
    handshake at INFO with its query string, and a key must never reach a log. Also drops
    uvicorn's error line for a response the app stopped sending: the service does that only
    to a client that did not read its answer in time (serve.flow.Answer), and logs it
    itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message == "ASGI callable returned without completing response.":
            return False
        if "key=" in message:
            record.msg, record.args = _QUERY_KEY.sub(r"\1<redacted>", message), None
        return True


def redact_keys() -> None:
    """Install ``RedactKeys`` on the loggers that print request lines (idempotent; a logger's
    filters survive uvicorn's logging set-up)."""
    for name in ("uvicorn.error", "uvicorn.access", "midas_onnx"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())


def prepare_process(stream=None) -> None:
    """Log the service's own lines on ``stream`` (default stderr: access log, errors) and cap
    glibc's malloc arenas; uvicorn's own access log is silenced (serve.observe writes the one
    access log). Keys are left out of every request line (``redact_keys``). Idempotent."""
    global _prepared
    redact_keys()
    if _prepared:
        return
    _prepared = True
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("midas_onnx")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    limit_malloc_arenas()


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; with decode threads
    handling multi-megabyte images, freed memory stays scattered across them and RSS creeps
    up. Capping arenas (as MALLOC_ARENA_MAX does) keeps it flat. No-op off glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def install_drain(drain) -> None:
    """On SIGTERM: run ``drain()`` (a coroutine function), then make uvicorn exit cleanly.

    Only in the main thread (signals cannot be caught elsewhere; servers run in a test
    thread keep uvicorn's default). uvicorn's handler, installed before the app starts, is
    a bound method of its Server; after the drain that server is told to exit through its
    ``should_exit`` flag, as uvicorn's programmatic API does, so no signal is re-raised and
    the exit status is 0.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    server = getattr(previous, "__self__", None)
    started: list[asyncio.Task] = []

    async def drain_then_exit() -> None:
        try:
            await drain()
        finally:
            if server is not None and hasattr(server, "should_exit"):
                server.should_exit = True
            elif callable(previous):
                previous(signal.SIGTERM, None)
            else:
                raise SystemExit(0)

    def on_term(signum, frame) -> None:
        if not started:  # a second SIGTERM changes nothing: the drain is bounded already
            started.append(loop.create_task(drain_then_exit()))

    signal.signal(signal.SIGTERM, lambda signum, frame: loop.call_soon_threadsafe(on_term, signum, frame))
