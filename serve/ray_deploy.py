"""``midas-onnx serve --ray``: the same app (``create_app``) as the ingress of a Ray Serve
deployment, N replicas (or autoscaled on ongoing requests), HTTP through Ray Serve's proxy.

Each replica runs the app's lifespan, so it loads its own ``DepthHeatmapper`` once (one
inference worker, ``threads`` 1 unless given); jobs live in the named store actor
(serve/ray_jobs.py) so any replica answers for any job. Without ``address`` a local Ray is
started (its files under a private temp dir) and shut down on exit; with one, the cluster is
joined and the store actor is detached (it outlives this driver).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
import threading
import time

APP_NAME = "midas"


def build(settings, replicas: int = 2, autoscale: tuple[int, int] | None = None, max_ongoing: int = 8,
          cpus_per_replica: float | None = None):
    from ray import serve

    from .app import create_app

    opts = dict(max_ongoing_requests=max_ongoing, health_check_period_s=2, health_check_timeout_s=10,
                graceful_shutdown_timeout_s=max(1.0, settings.drain_timeout_s),
                logging_config={"enable_access_log": False})
    most = autoscale[1] if autoscale else replicas
    opts["ray_actor_options"] = {"num_cpus": cpus_per_replica if cpus_per_replica is not None
                                 else round(min(1.0, max(0.1, 1.0 / most)), 3)}
    if autoscale:
        opts["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                      "target_ongoing_requests": 2, "upscale_delay_s": 5, "downscale_delay_s": 60}
    else:
        opts["num_replicas"] = replicas

    @serve.deployment(**opts)
    @serve.ingress()
    class MidasIngress:
        # never set self.app here: the wrapper's ``app`` is a read-only property
        def __init__(self, settings) -> None:
            self.settings = settings
            self._midas_app = None

        def __serve_build_asgi_app__(self):
            self._midas_app = create_app(self.settings)
            pid = str(os.getpid())

            @self._midas_app.middleware("http")
            async def replica_header(request, call_next):  # which replica answered (tests, debugging)
                response = await call_next(request)
                response.headers["X-Midas-Replica"] = pid
                return response

            return self._midas_app

        def check_health(self) -> None:
            """Unhealthy (Serve replaces the replica) when the model failed to load or the
            inference worker died; a replica still loading is healthy and answers 503 loading."""
            if self._midas_app is None:
                return
            svc = self._midas_app.state.service
            if svc.load_error:
                raise RuntimeError(f"model failed to load: {svc.load_error}")
            if not svc.alive():
                raise RuntimeError(f"inference stopped: {svc.batcher.dead}")

    return MidasIngress.bind(settings)


def replica_settings(settings):
    """One inference worker per replica, single-threaded unless --threads says otherwise;
    jobs in the Ray store."""
    return dataclasses.replace(settings, workers=1, threads=settings.threads or 1, job_store="ray")


def run_on_ray(settings, address: str | None = None, replicas: int = 2, autoscale: tuple[int, int] | None = None,
               host: str = "127.0.0.1", port: int = 8000, ready=None) -> None:
    """Deploy and serve until SIGINT/SIGTERM, then delete the app (replicas drain) and shut
    down Serve and, if we started it, the local Ray."""
    import ray
    from ray import serve

    from .ray_jobs import NAMESPACE, store_actor

    t0 = time.monotonic()
    local = address is None
    init = dict(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    if local:
        init |= dict(num_cpus=len(os.sched_getaffinity(0)),
                     _temp_dir=tempfile.mkdtemp(prefix="midas-ray-", dir="/tmp"))
    ray.init(address=address or "local", **init)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        settings = replica_settings(settings)
        store = store_actor(settings, detached=not local)  # noqa: F841 - held: a non-detached actor dies with its last handle
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(settings, replicas, autoscale), name=APP_NAME, route_prefix="/", blocking=False)
        print(f"midas-onnx serve --ray: {replicas if not autoscale else '%d..%d' % autoscale} replica(s) "
              f"on http://{host}:{port} (deployed in {time.monotonic() - t0:.1f} s)", flush=True)
        if ready is not None:
            ready()
        while not stop.wait(0.5):
            pass
        print("midas-onnx serve --ray: stopping (replicas drain)", flush=True)
        serve.delete(APP_NAME)
        if local:
            serve.shutdown()
    finally:
        ray.shutdown()
