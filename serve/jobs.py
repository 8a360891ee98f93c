"""Asynchronous jobs: bounded in number, and forgotten a set time after they finish."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


class TooManyJobs(Exception):
    """The job store is at its bound."""


@dataclass
class Job:
    id: str
    total: int
    created: float = field(default_factory=time.time)
    status: str = "queued"  # queued -> running -> done | failed
    completed: int = 0
    finished: float | None = None
    results: list[dict] = field(default_factory=list)
    error: str | None = None

    def view(self, ttl_s: float) -> dict:
        out = {"id": self.id, "status": self.status, "progress": self.completed / self.total if self.total else 1.0,
               "images": self.total, "completed": self.completed, "created": self.created}
        if self.finished is not None:
            out["expires_in_s"] = max(0.0, self.finished + ttl_s - time.time())
        if self.status == "done":
            out["results"] = self.results
        if self.error:
            out["error"] = self.error
        return out


class JobStore:
    def __init__(self, ttl_s: float, max_jobs: int) -> None:
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self._jobs: dict[str, Job] = {}

    def create(self, total: int) -> Job:
        self.expire()
        if len(self._jobs) >= self.max_jobs:
            raise TooManyJobs()
        job = Job(uuid.uuid4().hex, total)
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        self.expire()
        return self._jobs.get(job_id)

    def finish(self, job: Job, error: str | None = None) -> None:
        job.status = "failed" if error else "done"
        job.error = error
        job.finished = time.time()

    def expire(self) -> int:
        """Drop finished jobs older than the TTL; returns how many were dropped."""
        now = time.time()
        old = [k for k, j in self._jobs.items() if j.finished is not None and now - j.finished > self.ttl_s]
        for k in old:
            del self._jobs[k]
        return len(old)

    def __len__(self) -> int:
        return len(self._jobs)
