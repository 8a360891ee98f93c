"""Asynchronous jobs: bounded in number and in bytes, forgotten a set time after they finish.

Bytes held = uploads not yet processed + results kept, over all jobs. A new job is refused
when the store is full in count or bytes: checked before its body is read (``has_room``)
and again with its real size (``create``). An upload's bytes are given back as soon as its
image is through inference, and a finished job's results when it expires. Expiry runs on
the monotonic clock, so a wall-clock jump neither drops fresh results nor keeps old ones.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field


class TooManyJobs(Exception):
    """The job store is at its bound (count or bytes)."""


@dataclass(eq=False)
class Job:
    id: str
    total: int
    created: float = field(default_factory=time.time)  # wall clock, for people reading it
    status: str = "queued"  # queued -> running -> done | failed
    completed: int = 0
    finished_at: float | None = None  # monotonic
    results: list[dict] = field(default_factory=list)
    error: str | None = None
    held: int = 0  # bytes this job holds in the store

    def view(self, ttl_s: float) -> dict:
        out = {"id": self.id, "status": self.status, "progress": self.completed / self.total if self.total else 1.0,
               "images": self.total, "completed": self.completed, "created": self.created}
        if self.finished_at is not None:
            out["expires_in_s"] = max(0.0, self.finished_at + ttl_s - time.monotonic())
        if self.status == "done":
            out["results"] = self.results
        if self.error:
            out["error"] = self.error
        return out


class JobStore:
    def __init__(self, ttl_s: float, max_jobs: int, max_bytes: int) -> None:
        self.ttl_s, self.max_jobs, self.max_bytes = ttl_s, max_jobs, max_bytes
        self.held = 0
        self._jobs: dict[str, Job] = {}

    def has_room(self) -> bool:
        self.expire()
        return len(self._jobs) < self.max_jobs and self.held < self.max_bytes

    def create(self, total: int, upload_bytes: int) -> Job:
        if not self.has_room() or self.held + upload_bytes > self.max_bytes:
            raise TooManyJobs()
        job = Job(uuid.uuid4().hex, total, held=upload_bytes, results=[{}] * total)
        self.held += upload_bytes
        self._jobs[job.id] = job
        return job

    def add(self, job: Job, index: int, entry: dict, result_bytes: int, upload_bytes: int) -> None:
        """Image ``index``'s entry: its result's bytes are now held, its upload's given back."""
        job.results[index] = entry
        job.completed += 1
        delta = result_bytes - upload_bytes
        job.held += delta
        self.held += delta

    def get(self, job_id: str) -> Job | None:
        self.expire()
        return self._jobs.get(job_id)

    def finish(self, job: Job, error: str | None = None) -> None:
        job.status = "failed" if error else "done"
        job.error = error
        job.finished_at = time.monotonic()

    def expire(self) -> int:
        """Drop finished jobs older than the TTL; returns how many were dropped."""
        now = time.monotonic()
        old = [k for k, j in self._jobs.items() if j.finished_at is not None and now - j.finished_at > self.ttl_s]
        for k in old:
            self.held -= self._jobs.pop(k).held
        return len(old)

    def by_state(self) -> dict[str, int]:
        counts = Counter(j.status for j in self._jobs.values())
        return {state: counts.get(state, 0) for state in ("queued", "running", "done", "failed")}

    def running(self) -> int:
        return sum(1 for j in self._jobs.values() if j.status in ("queued", "running"))

    def __len__(self) -> int:
        return len(self._jobs)
