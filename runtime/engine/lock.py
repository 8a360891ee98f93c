"""One job per OUTPUT at a time: an exclusive lock on a file in OUTPUT's state folder.

The lock is the operating system's (``flock``), held by an open file for the job's life, so
a job that is killed, however hard, cannot leave it stuck: the kernel drops it with the
process. The file holds the running job's description, which a second job refused names.
The file itself is never removed: deleting a lock file that another process has open is
how two jobs end up holding "the" lock on two different files.

For object-store OUTPUTs the state folder is this machine's, so the lock keeps out a second
job started from this machine; jobs on one OUTPUT from two machines are not detected.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from .journal import JobError

LOCK_FILE = ".job.lock"


class OutputLock:
    """Held from ``acquire`` until ``release`` (or the process's end)."""

    def __init__(self, folder: Path, output: str) -> None:
        self.path, self.output = folder / LOCK_FILE, output
        self.fd: int | None = None

    def acquire(self, command: str) -> "OutputLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise JobError(f"{self.path}: cannot be written ({exc.strerror or exc})") from None
        if not _try_lock(fd):
            holder = os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "another job"
            os.close(fd)
            raise JobError(f"{self.output} is in use by {holder}; wait for it to end, or write to another OUTPUT")
        description = (f"{command} (pid {os.getpid()} on {socket.gethostname()}, started "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, description.encode() + b"\n", 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            finally:
                os.close(self.fd)  # closing the file drops the lock
                self.fd = None


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on the whole file; False when another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows has no flock: there, keeping to one job per OUTPUT is the user's care
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
