"""Asynchronous jobs: bounded in number (in all and per API key) and in bytes, forgotten a set
time after they finish. One implementation, plain Python: the in-process store, and the
state of the named Ray actor that any replica asks under ``--ray`` (serve.ray_jobs).

Bytes held = uploads not yet processed + results kept, over all jobs. A new job is refused
when the store is full (count, bytes, or its key's share): checked before its body is read
(``refusal``) and again with its real size (``create``). An upload's bytes are given back
when its image's entry is added (the runner drops the upload then too); a result that
would take the store past its bound is kept as a ``job_store_full`` error entry instead.
When a job finishes, its results are serialised once: every read of it sends those same
bytes (``JobView``), and they are what the store counts from then on. Expiry runs on the
monotonic clock, so a wall-clock jump neither drops fresh results nor keeps old ones.

Leases (``lease_s``, the Ray store): the process running a job renews it; a job whose
lease is older than ``lease_s`` lost its process, and its images not done become
``replica_lost`` entries, so no job stays running for ever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, NamedTuple

log = logging.getLogger("midas_onnx.serve")

STATES = ("queued", "running", "done", "failed")


class TooManyJobs(Exception):
    """The job store is at a bound: ``per_key`` says whether it is the key's own share."""

    def __init__(self, message: str, per_key: bool = False) -> None:
        super().__init__(message)
        self.per_key = per_key


class JobView(NamedTuple):
    """What a read of a job answers: its state, and once finished its results as JSON bytes
    serialised when it finished."""

    head: dict
    results: bytes | None

    def parts(self) -> list[bytes]:
        """The view as JSON, in parts sent one after another (the results never copied)."""
        head = json.dumps(self.head).encode()
        if self.results is None:
            return [head]
        return [head[:-1], b', "results": ', self.results, b"}"]


@dataclass(eq=False)
class _Job:
    id: str
    total: int
    key: str
    owner: str
    lease: float
    created: float = field(default_factory=time.time)  # wall clock, for people reading it
    status: str = "queued"
    completed: int = 0
    finished_at: float | None = None  # monotonic
    results: list[dict | None] = field(default_factory=list)
    serialised: bytes | None = None
    error: str | None = None
    held: int = 0  # bytes this job holds in the store


class JobStore:
    def __init__(self, ttl_s: float, max_jobs: int, max_bytes: int, max_per_key: int,
                 lease_s: float = math.inf) -> None:
        self.configure(ttl_s, max_jobs, max_bytes, max_per_key, lease_s)
        self.held = 0
        self._jobs: dict[str, _Job] = {}

    def configure(self, ttl_s: float, max_jobs: int, max_bytes: int, max_per_key: int,
                  lease_s: float = math.inf) -> None:
        self.ttl_s, self.max_jobs, self.max_bytes = ttl_s, max_jobs, max_bytes
        self.max_per_key, self.lease_s = max_per_key, lease_s

    def refusal(self, key: str = "-") -> tuple[str, bool] | None:
        """Why a new job of ``key`` would be refused now, and whether for its key's share;
        None when there is room (before its body is read)."""
        try:
            self._check_room(key, 0)
        except TooManyJobs as exc:
            return str(exc), exc.per_key
        return None

    def _check_room(self, key: str, upload_bytes: int) -> None:
        self.expire()
        if len(self._jobs) >= self.max_jobs or self.held + upload_bytes > self.max_bytes or \
                (upload_bytes == 0 and self.held >= self.max_bytes):
            raise TooManyJobs(f"the job store is full ({self.max_jobs} jobs or {self.max_bytes:,} bytes held); "
                              "retry later")
        if key != "-" and sum(j.key == key for j in self._jobs.values()) >= self.max_per_key:
            raise TooManyJobs(f"key {key} holds {self.max_per_key} jobs, its most; retry when one has expired",
                              per_key=True)

    def create(self, total: int, upload_bytes: int, key: str = "-", owner: str = "") -> str:
        """A new job's id; ``TooManyJobs`` when it does not fit."""
        self._check_room(key, upload_bytes)
        job = _Job(uuid.uuid4().hex, total, key, owner, time.monotonic(), results=[None] * total,
                   held=upload_bytes)
        self.held += upload_bytes
        self._jobs[job.id] = job
        return job.id

    def start(self, jid: str) -> None:
        job = self._jobs.get(jid)
        if job is not None and job.finished_at is None:
            job.status, job.lease = "running", time.monotonic()

    def add(self, jid: str, index: int, entry: dict, result_bytes: int, upload_bytes: int) -> bool:
        """Image ``index``'s entry: its result's bytes are held from now on, its upload's
        given back. False when the job has gone (expired, or reported lost meanwhile)."""
        job = self._jobs.get(jid)
        if job is None or job.finished_at is not None or job.results[index] is not None:
            return False
        delta = result_bytes - upload_bytes
        if self.held + delta > self.max_bytes:  # never beyond the byte bound: the entry becomes an error
            entry = {"name": entry.get("name"), "error": {"status": 503, "code": "job_store_full",
                                                          "message": "the job store is full; result dropped"}}
            delta = -upload_bytes
        job.results[index] = entry
        job.completed += 1
        job.held += delta
        self.held += delta
        job.lease = time.monotonic()
        return True

    def finish(self, jid: str, error: str | None = None) -> None:
        job = self._jobs.get(jid)
        if job is not None and job.finished_at is None:
            self._finish(job, error)

    def _finish(self, job: _Job, error: str | None, status: str | None = None) -> None:
        job.status, job.error, job.finished_at = status or ("failed" if error else "done"), error, time.monotonic()
        job.serialised = json.dumps([r or {} for r in job.results]).encode()
        job.results = []
        self.held += len(job.serialised) - job.held
        job.held = len(job.serialised)

    def heartbeat(self, jids: list[str]) -> None:
        now = time.monotonic()
        for jid in jids:
            if (job := self._jobs.get(jid)) is not None:
                job.lease = now

    def view(self, jid: str) -> JobView | None:
        self.expire()
        job = self._jobs.get(jid)
        if job is None:
            return None
        head = {"id": job.id, "status": job.status, "progress": job.completed / job.total if job.total else 1.0,
                "images": job.total, "completed": job.completed, "created": job.created}
        if job.finished_at is not None:
            head["expires_in_s"] = max(0.0, job.finished_at + self.ttl_s - time.monotonic())
        if job.error:
            head["error"] = job.error
        return JobView(head, job.serialised)

    def expire(self) -> int:
        """Reap lost leases (images not done -> failed entries), then drop finished jobs older
        than the TTL; returns how many were dropped."""
        now = time.monotonic()
        for job in self._jobs.values():
            if job.finished_at is None and now - job.lease > self.lease_s:
                for i, entry in enumerate(job.results):
                    if entry is None:
                        job.results[i] = {"error": {"status": 503, "code": "replica_lost",
                                                    "message": "the replica processing this image stopped"}}
                        job.completed += 1
                # done: every image has its entry, the lost ones ``replica_lost``
                self._finish(job, "the replica processing this job stopped; images not done are reported failed",
                             status="done")
        old = [k for k, j in self._jobs.items() if j.finished_at is not None and now - j.finished_at > self.ttl_s]
        for k in old:
            self.held -= self._jobs.pop(k).held
        return len(old)

    def by_state(self) -> dict[str, int]:
        counts = Counter(j.status for j in self._jobs.values())
        return {state: counts.get(state, 0) for state in STATES}

    def running(self, owner: str | None = None) -> int:
        """Jobs not finished (of ``owner`` only, when given)."""
        return sum(1 for j in self._jobs.values() if j.finished_at is None and owner in (None, j.owner))

    def stats(self) -> dict:
        return {"jobs": len(self._jobs), "held": self.held, "by_state": self.by_state()}

    def __len__(self) -> int:
        return len(self._jobs)


class Jobs:
    """The service's handle on a ``JobStore``: every call awaited, whether the store is in
    this process (``local``) or the Ray actor's (serve.ray_jobs), so no call ever blocks the
    event loop. Knows the jobs this process runs (``running``: what a drain waits for) and,
    when the store has leases, renews them every ``lease_s / 3`` seconds."""

    def __init__(self, call: Callable[..., Awaitable], owner: str = "", lease_s: float = math.inf) -> None:
        self.call, self.owner, self.lease_s = call, owner, lease_s
        self.owned: set[str] = set()
        self.stats = {"jobs": 0, "held": 0, "by_state": dict.fromkeys(STATES, 0)}  # as of the last refresh

    @classmethod
    def local(cls, store: JobStore) -> "Jobs":
        async def call(method: str, *args):
            return getattr(store, method)(*args)

        return cls(call)

    async def create(self, total: int, upload_bytes: int, key: str) -> str:
        jid = await self.call("create", total, upload_bytes, key, self.owner)
        self.owned.add(jid)
        return jid

    async def finish(self, jid: str, error: str | None = None) -> None:
        """Finish ``jid`` (a few tries: a store briefly away must not leave it running); the
        process stops renewing its lease either way, so a store that never answers reports
        its images lost once the lease runs out."""
        try:
            for attempt in range(3):
                try:
                    return await self.call("finish", jid, error)
                except Exception:  # noqa: BLE001 - retried, then logged
                    if attempt == 2:
                        log.exception("job %s: could not be marked finished", jid)
                    await asyncio.sleep(0.2 * (attempt + 1))
        finally:
            self.owned.discard(jid)

    def running(self) -> int:
        return len(self.owned)

    async def refresh(self) -> dict:
        """Expire old jobs and read the store's counts (what /metrics shows)."""
        await self.call("expire")
        self.stats = await self.call("stats")
        return self.stats

    async def keep_leases(self) -> None:
        """Renew this process's jobs' leases until cancelled (only when leases expire)."""
        while math.isfinite(self.lease_s):
            await asyncio.sleep(max(0.1, self.lease_s / 3))
            if self.owned:
                try:
                    await self.call("heartbeat", list(self.owned))
                except Exception:  # noqa: BLE001 - the next beat retries; a lost lease is the owner's loss
                    pass
