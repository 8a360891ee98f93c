"""Jobs any replica can answer: ``serve.jobs.JobStore`` (the in-process store's own class) as
one named Ray actor (``midas_onnx_jobs`` in namespace ``midas_onnx``), and the replicas'
``serve.jobs.Jobs`` handle on it.

The actor holds the same bounds as the in-process store: jobs in number (in all and per
key), bytes held (uploads waiting + results kept) and a TTL on ``time.monotonic()`` after a
job finishes. It is its own actor, so a replica's death loses nothing; it restarts
(``max_restarts=-1``) EMPTY if its own process dies, and it is lost with the head node (it
keeps no state on disk).

A job is processed by the replica that took it (its owner). The owner renews a lease on each
of its running jobs every ``lease_s / 3`` s; when a lease is older than ``lease_s`` (the owner
died), the job's images not done are reported as failed (``replica_lost``) and the job ends,
so it never stays "running" for ever.

Every call from a replica is awaited (an ``ObjectRef`` is awaitable), with a timeout: none
blocks the replica's event loop, however slow the actor or the cluster.
"""

from __future__ import annotations

import asyncio
import os

from .jobs import Jobs, JobStore

STORE_NAME, NAMESPACE = "midas_onnx_jobs", "midas_onnx"
CALL_TIMEOUT_S = 10.0


def _bounds(settings) -> tuple:
    return settings.job_ttl, settings.max_jobs, settings.max_job_bytes, settings.max_jobs_per_key, settings.job_lease


def store_actor(settings, detached: bool = False):
    """The named store actor, created if it does not exist (``ray.init`` must have run; the
    driver's own set-up, so a blocking call is fine here)."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=1)(JobStore)
    opts = dict(name=STORE_NAME, namespace=NAMESPACE, get_if_exists=True)
    if detached:
        opts["lifetime"] = "detached"
    handle = actor.options(**opts).remote(*_bounds(settings))
    ray.get(handle.configure.remote(*_bounds(settings)), timeout=60)
    return handle


def ray_jobs(settings) -> Jobs:
    """A replica's handle on the store actor: found when first used (and again after the
    actor restarts under the same name)."""
    import ray

    found: list = []

    async def call(method: str, *args):
        if not found:
            found.append(await asyncio.to_thread(ray.get_actor, STORE_NAME, namespace=NAMESPACE))
        try:
            return await asyncio.wait_for(getattr(found[0], method).remote(*args), CALL_TIMEOUT_S)
        except (ray.exceptions.RayActorError, ValueError):
            found.clear()
            raise

    return Jobs(call, owner=f"{os.uname().nodename}:{os.getpid()}", lease_s=settings.job_lease)
