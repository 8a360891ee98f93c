"""Ray up for one job and down after it: a fresh local Ray unless an address is given,
quiet unless asked, errors as one line.

Quiet means the process's stdout and stderr go to a log file while Ray runs: Ray's C++ core,
its raylet messages and the tracebacks of its workers write there, whatever their logger.
The file is named in the error line when the job stops or inputs fail, and removed when
everything succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Callable, TypeVar

from runtime.errors import MidasOnnxError
from runtime.engine import JobError

T = TypeVar("T")


class BulkError(JobError):
    """A bulk job that cannot start or cannot go on; the message says why, in one line."""


def with_ray(address: str | None, verbose: bool, work: Callable[[], T]) -> tuple[T, str | None]:
    """``work()`` with Ray up; returns its result and the log file's path (None: removed or verbose)."""
    import ray

    level = logging.INFO if verbose else logging.CRITICAL
    logging.getLogger("ray").setLevel(level)
    with _quiet(not verbose) as log_path:
        started_here = not ray.is_initialized()
        try:
            if started_here:
                # log_to_driver: workers' output (the tracebacks of inputs that failed) reaches
                # this process's stderr, which quiet mode sends to the log file it keeps
                ray.init(address=address or "local", include_dashboard=False, log_to_driver=True,
                         configure_logging=True, logging_level=level)
            result = work()
        except MidasOnnxError as exc:
            raise type(exc)(f"{exc}{_see(log_path)}") from None
        except Exception as exc:  # Ray's own errors: one line naming the cause
            if verbose:
                raise
            raise BulkError(f"the bulk job stopped: {cause(exc)}{_see(log_path)}") from None
        finally:
            if started_here:
                ray.shutdown()
    return result, log_path


def _see(log_path: str | None) -> str:
    return f" (Ray's output: {log_path})" if log_path else ""


@contextlib.contextmanager
def _quiet(enabled: bool):
    """File descriptors 1 and 2 into a log file (yielding its path), restored afterwards."""
    if not enabled:
        yield None
        return
    fd, path = tempfile.mkstemp(prefix="midas-bulk-ray-", suffix=".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def cause(exc: BaseException) -> str:
    """The innermost meaningful line of a Ray error chain."""
    text = str(exc)
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "Traceback", "During handling")) and ":" in line:
            return line[:400]
    return (text.strip().splitlines() or [type(exc).__name__])[0][:400]
