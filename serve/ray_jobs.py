"""Jobs any replica can answer: the job store as one named Ray actor (``midas_onnx_jobs`` in
namespace ``midas_onnx``), with the interface ``Service`` and the routes use on
``serve.jobs.JobStore`` (has_room, create, add, get, finish, expire, by_state, running, held).

The actor holds the same bounds as the in-process store: jobs in number, bytes held (uploads
waiting + results kept) and a TTL on ``time.monotonic()`` after a job finishes. It is its own
actor, so a replica's death loses nothing; it restarts (``max_restarts=-1``) EMPTY if its own
process dies, and it is lost with the head node (it keeps no state on disk).

A job is processed by the replica that took it (its owner). The owner renews a lease on each
of its running jobs every ``lease_s / 3`` s; when a lease is older than ``lease_s`` (the owner
died), the job's images not done are reported as failed (``replica_lost``) and the job ends,
so it never stays "running" for ever.

Calls from a replica are blocking ``ray.get`` with a timeout: a local actor call is well under a
millisecond of event-loop time, and one of these runs per job request or per finished image.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter

from .jobs import TooManyJobs

STORE_NAME, NAMESPACE = "midas_onnx_jobs", "midas_onnx"
CALL_TIMEOUT_S = 10.0


class JobStoreState:
    """The actor's state (plain Python: tested without Ray too)."""

    def __init__(self, ttl_s: float, max_jobs: int, max_bytes: int, lease_s: float = 15.0) -> None:
        self.ttl_s, self.max_jobs, self.max_bytes, self.lease_s = ttl_s, max_jobs, max_bytes, lease_s
        self.held = 0
        self.jobs: dict[str, dict] = {}

    def configure(self, ttl_s: float, max_jobs: int, max_bytes: int, lease_s: float) -> None:
        self.ttl_s, self.max_jobs, self.max_bytes, self.lease_s = ttl_s, max_jobs, max_bytes, lease_s

    def has_room(self) -> bool:
        self.expire()
        return len(self.jobs) < self.max_jobs and self.held < self.max_bytes

    def create(self, total: int, upload_bytes: int, owner: str) -> str | None:
        if not self.has_room() or self.held + upload_bytes > self.max_bytes:
            return None
        jid = uuid.uuid4().hex
        self.jobs[jid] = {"id": jid, "total": total, "created": time.time(), "status": "queued", "completed": 0,
                          "finished_at": None, "results": [{}] * total, "done": [False] * total, "error": None,
                          "held": upload_bytes, "owner": owner, "lease": time.monotonic()}
        self.held += upload_bytes
        return jid

    def set_status(self, jid: str, status: str) -> None:
        job = self.jobs.get(jid)
        if job is not None and job["finished_at"] is None:
            job["status"] = status
            job["lease"] = time.monotonic()

    def add(self, jid: str, index: int, entry: dict, result_bytes: int, upload_bytes: int) -> bool:
        job = self.jobs.get(jid)
        if job is None or job["finished_at"] is not None or job["done"][index]:
            return False  # expired, or already reported failed after a lost lease
        delta = result_bytes - upload_bytes
        if self.held + delta > self.max_bytes:  # never beyond the byte bound: the entry becomes an error
            entry = {"name": entry.get("name"), "error": {"code": "job_store_full",
                                                          "message": "the job store is full; result dropped"}}
            delta = -upload_bytes
        job["results"][index] = entry
        job["done"][index] = True
        job["completed"] += 1
        job["held"] += delta
        self.held += delta
        job["lease"] = time.monotonic()
        return True

    def finish(self, jid: str, error: str | None = None) -> None:
        job = self.jobs.get(jid)
        if job is not None and job["finished_at"] is None:
            job["status"] = "failed" if error else "done"
            job["error"] = error
            job["finished_at"] = time.monotonic()

    def heartbeat(self, jids: list[str]) -> None:
        now = time.monotonic()
        for jid in jids:
            job = self.jobs.get(jid)
            if job is not None:
                job["lease"] = now

    def get(self, jid: str) -> dict | None:
        self.expire()
        job = self.jobs.get(jid)
        if job is None:
            return None
        out = {"id": jid, "status": job["status"], "progress": job["completed"] / job["total"] if job["total"] else 1.0,
               "images": job["total"], "completed": job["completed"], "created": job["created"]}
        if job["finished_at"] is not None:
            out["expires_in_s"] = max(0.0, job["finished_at"] + self.ttl_s - time.monotonic())
        if job["status"] == "done":
            out["results"] = job["results"]
        if job["error"]:
            out["error"] = job["error"]
        return out

    def expire(self) -> int:
        """Reap lost leases (images not done -> failed entries), then drop finished jobs older
        than the TTL; returns how many were dropped."""
        now = time.monotonic()
        for job in self.jobs.values():
            if job["finished_at"] is None and now - job["lease"] > self.lease_s:
                for i, done in enumerate(job["done"]):
                    if not done:
                        job["results"][i] = {"error": {"code": "replica_lost",
                                                       "message": "the replica processing this image stopped"}}
                        job["done"][i] = True
                        job["completed"] += 1
                self.held -= job["held"]  # uploads of the lost images are gone with their replica
                job["held"] = 0
                job["status"], job["finished_at"] = "done", now
                job["error"] = "the replica processing this job stopped; images not done are reported failed"
        old = [k for k, j in self.jobs.items() if j["finished_at"] is not None and now - j["finished_at"] > self.ttl_s]
        for k in old:
            self.held -= self.jobs.pop(k)["held"]
        return len(old)

    def by_state(self) -> dict[str, int]:
        counts = Counter(j["status"] for j in self.jobs.values())
        return {state: counts.get(state, 0) for state in ("queued", "running", "done", "failed")}

    def stats(self) -> dict:
        return {"jobs": len(self.jobs), "held": self.held, "pid": os.getpid()}


def store_actor(settings, detached: bool = False):
    """The named store actor, created if it does not exist (``ray.init`` must have run)."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=1)(JobStoreState)
    opts = dict(name=STORE_NAME, namespace=NAMESPACE, get_if_exists=True)
    if detached:
        opts["lifetime"] = "detached"
    handle = actor.options(**opts).remote(settings.job_ttl, settings.max_jobs, settings.max_job_bytes,
                                          settings.job_lease)
    ray.get(handle.configure.remote(settings.job_ttl, settings.max_jobs, settings.max_job_bytes,
                                    settings.job_lease), timeout=60)
    return handle


class _JobView:
    """What ``get`` returns: the routes call ``view(ttl_s)`` on it."""

    def __init__(self, data: dict) -> None:
        self._data = data
        self.id, self.status = data["id"], data["status"]

    def view(self, ttl_s: float) -> dict:
        return self._data


class RayJob:
    """The owner's handle on a job it processes; setting ``status`` reaches the actor."""

    def __init__(self, store: "RayJobStore", jid: str, total: int) -> None:
        self._store, self.id, self.total = store, jid, total
        self._status = "queued"

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        self._status = value
        self._store._call("set_status", self.id, value)


class RayJobStore:
    """``serve.jobs.JobStore``'s interface over the named actor, in a replica."""

    def __init__(self, settings) -> None:
        import ray

        self.settings = settings
        self.owner = f"{os.uname().nodename}:{os.getpid()}"
        self._ray = ray
        self._handle = None
        self._owned: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._beat, name="job-lease", daemon=True).start()

    def _actor(self):
        if self._handle is None:
            self._handle = self._ray.get_actor(STORE_NAME, namespace=NAMESPACE)
        return self._handle

    def _call(self, method: str, *args):
        try:
            return self._ray.get(getattr(self._actor(), method).remote(*args), timeout=CALL_TIMEOUT_S)
        except (self._ray.exceptions.RayActorError, ValueError):
            self._handle = None  # re-found on the next call (the actor restarts under the same name)
            raise

    def _beat(self) -> None:
        while not self._stop.wait(max(0.1, self.settings.job_lease / 3)):
            with self._lock:
                owned = list(self._owned)
            if owned:
                try:
                    self._call("heartbeat", owned)
                except Exception:  # noqa: BLE001 - next beat retries; a lost lease is the owner's loss
                    pass

    def close(self) -> None:
        self._stop.set()

    # -- the JobStore interface ---------------------------------------------------------------
    def has_room(self) -> bool:
        return self._call("has_room")

    def create(self, total: int, upload_bytes: int) -> RayJob:
        jid = self._call("create", total, upload_bytes, self.owner)
        if jid is None:
            raise TooManyJobs()
        with self._lock:
            self._owned.add(jid)
        return RayJob(self, jid, total)

    def add(self, job: RayJob, index: int, entry: dict, result_bytes: int, upload_bytes: int) -> None:
        self._call("add", job.id, index, entry, result_bytes, upload_bytes)

    def get(self, job_id: str) -> _JobView | None:
        data = self._call("get", job_id)
        return None if data is None else _JobView(data)

    def finish(self, job: RayJob, error: str | None = None) -> None:
        job._status = "failed" if error else "done"
        try:
            self._call("finish", job.id, error)
        finally:
            with self._lock:
                self._owned.discard(job.id)

    def expire(self) -> int:
        try:  # the service's expiry loop calls this; a store briefly away must not end the loop
            return self._call("expire")
        except Exception:  # noqa: BLE001
            return 0

    def by_state(self) -> dict[str, int]:
        return self._call("by_state")

    def running(self) -> int:
        """Jobs this replica is processing (what its drain waits for)."""
        with self._lock:
            return len(self._owned)

    @property
    def held(self) -> int:
        return self._call("stats")["held"]

    def __len__(self) -> int:
        return self._call("stats")["jobs"]
