"""``midas-onnx serve --ray``: the same app (``create_app``) as the ingress of a Ray Serve
deployment, N replicas (or autoscaled on ongoing requests).

HTTP reaches the replicas through Ray Serve's HAProxy ingress (Ray's own high-throughput
mode: ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` + ``RAY_SERVE_ENABLE_HA_PROXY``, Ray >= 2.56, the
binary ships with ``ray[serve]``): each replica serves HTTP itself on a port of its own
(30000-31000, bound to ``--host``) and HAProxy on ``--host:--port`` balances over the ready
ones, costing far less CPU per request than Ray's Python proxy (docs/commands/serve.md has
the figures). A local Ray gets these settings (and HAProxy files and stats ports of its own,
so two servers on one machine do not collide); an existing cluster (``address``) keeps
whatever it was started with.

Each replica runs the app's lifespan, so it loads its own ``DepthHeatmapper`` once (one
inference worker, ``threads`` 1 unless given); jobs live in the named store actor
(serve/ray_jobs.py) so any replica answers for any job. A replica being removed (the app
deleted, the autoscaler scaling in) drains as one process does on SIGTERM: accepted requests
and its running jobs finish, within the graceful-shutdown time (``--drain-timeout``). Its
uvicorn (Ray's, started by Serve) gets the CLI's WebSocket bounds and connection limit, and
OpenCV in it the service's pixel limit. Without ``address`` a local Ray is started (its files
under a private temp dir) and shut down on exit; with one, the cluster is joined and the
store actor is detached (it outlives this driver).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

APP_NAME = "midas"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_ray_environment(temp_dir: str, max_query_bytes: int) -> dict[str, str]:
    """Environment for a local Ray: replicas' log lines forwarded whole, and Serve's ingress
    HAProxy, its files under ``temp_dir`` and its stats and metrics ports free ones (Ray's
    defaults are one fixed path and ports per machine). ``temp_dir`` must be short: Ray adds
    a 56-character directory and HAProxy refuses socket paths over 97 characters. Values
    already in the environment win: set ``RAY_SERVE_ENABLE_HA_PROXY=0`` for Ray's Python proxy.

    HAProxy holds a request's line and headers in one buffer (16 KB by default), so the buffer
    is sized to the service's own query limit plus 16 KB of headers, or a long
    ``known_depths`` would be HAProxy's 400 instead of the service's 422; at most 1,024
    connections bound what those buffers can take (2 per connection: 170 MB at 64 KB)."""
    hap = Path(temp_dir)
    wanted = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hap / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hap / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hap),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hap / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(hap / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(max_query_bytes + 16 * 1024),
        "RAY_SERVE_HAPROXY_MAXCONN": "1024",
        # how long a stopping replica keeps serving so a load balancer notices: ours polls
        # every 250 ms once a server fails; Ray's 30 s default is for outside balancers
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        "RAY_DEDUP_LOGS": "0",  # the replicas' access logs, forwarded whole: Ray folds "similar" lines
    }
    return {k: os.environ.get(k, v) for k, v in wanted.items()}


def build(settings, replicas: int = 2, autoscale: tuple[int, int] | None = None, max_ongoing: int = 8,
          cpus_per_replica: float | None = None):
    from ray import serve

    from .app import create_app
    from .lifecycle import prepare_process

    opts = dict(max_ongoing_requests=max_ongoing, health_check_period_s=2, health_check_timeout_s=10,
                graceful_shutdown_timeout_s=max(1.0, settings.drain_timeout),
                logging_config={"enable_access_log": False})
    most = autoscale[1] if autoscale else replicas
    opts["ray_actor_options"] = {"num_cpus": cpus_per_replica if cpus_per_replica is not None
                                 else round(min(1.0, max(0.1, 1.0 / most)), 3),
                                 # in the replica's environment before anything imports cv2 there
                                 "runtime_env": {"env_vars": {"OPENCV_IO_MAX_IMAGE_PIXELS": str(settings.max_pixels)}}}
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
            # the process's real stderr, which Ray forwards to the driver: Serve swaps sys.stderr
            # for a logger whose lines it buffers (1,000 at a time) into its own files
            prepare_process(sys.__stderr__)
            uvicorn_bounds(self.settings)  # before Serve starts this replica's uvicorn
            self._midas_app = create_app(self.settings)
            self._midas_app.add_middleware(ReplicaHeader, pid=os.getpid())
            return self._midas_app

        async def __del__(self) -> None:
            """Serve's graceful shutdown of this replica (app deleted, scale-in): drain as
            SIGTERM does in one process."""
            if self._midas_app is not None:
                await self._midas_app.state.service.drain()

        def check_health(self) -> None:
            """Unhealthy (Serve replaces the replica) when the model failed to load or the
            inference worker died; a replica still loading is healthy and answers 503 loading."""
            if self._midas_app is None:
                return
            svc = self._midas_app.state.service
            if svc.load_error:
                raise RuntimeError(f"model failed to load: {svc.load_error}")
            if not svc.alive():
                raise RuntimeError(f"inference stopped: {svc.dead()}")

    return MidasIngress.bind(settings)


class ReplicaHeader:
    """``X-Midas-Replica: <pid>`` on every HTTP answer: which replica answered (tests,
    debugging). Pure ASGI: Starlette's ``BaseHTTPMiddleware`` would run each request through
    a stream of its own, a cost per request for a header."""

    def __init__(self, app, pid: int) -> None:
        self.app, self.header = app, (b"x-midas-replica", str(pid).encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_header(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, with_header)


def uvicorn_bounds(settings) -> None:
    """In this replica process, ``uvicorn.Config`` defaults to the CLI's WebSocket bounds
    (``ws_max_size``, no permessage-deflate) and connection limit: Serve starts each
    replica's uvicorn with a Config of its own that sets none of them. Private: Ray has no
    setting for these; guarded to a uvicorn whose Config takes them."""
    import inspect

    import uvicorn

    base = uvicorn.Config
    wanted = {"ws_max_size": settings.max_body_bytes, "ws_per_message_deflate": False,
              "limit_concurrency": settings.limit_concurrency}
    if getattr(base, "midas_bounds", False) or not set(wanted) <= set(inspect.signature(base).parameters):
        return

    class Config(base):  # type: ignore[misc, valid-type]
        midas_bounds = True

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **(wanted | kwargs))

    uvicorn.Config = Config


def app_builder(args: dict | None = None):
    """The deployment for Ray Serve's own tools: a RayService's or ``serve run``'s
    ``import_path: serve.ray_deploy:app_builder``, with ``args`` ``replicas`` or
    ``autoscale: "MIN:MAX"``; service settings from the environment (``MIDAS_ONNX_*``, as
    ``uvicorn --factory``). Creates the detached job store if the cluster has none."""
    from .ray_jobs import store_actor
    from .settings import ServeSettings, parse_autoscale

    args = args or {}
    settings = replica_settings(ServeSettings.load())
    scale = parse_autoscale(args["autoscale"]) if "autoscale" in args else None
    store_actor(settings, detached=True)
    return build(settings, int(args.get("replicas", 2)), scale)


def replica_settings(settings):
    """One inference worker per replica, single-threaded unless --threads says otherwise;
    jobs in the Ray store. No refusal throttle: a replica sees every client at the proxy's
    address, so one bucket would slow them all together."""
    return settings.replace(workers=1, threads=settings.threads or 1, job_store="ray", refusal_rate=0.0)


def _stop_orphaned_haproxy(hap_dir: str) -> None:
    """HAProxy is a child of Ray's HAProxyManager actor; if that actor dies without stopping it
    (killed, or Ray shut down under it) it keeps our port. Ours are told apart by their
    config path under ``hap_dir``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"haproxy") and any(a.startswith(hap_dir.encode()) for a in cmd):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)


def _ingress_error_page(hap_dir: str, retry_after: int, wait_s: float = 20.0) -> bool:
    """HAProxy's own answer when a replica fails under a request (a process killed mid-way)
    becomes the service's 503 envelope with Retry-After, not Ray's plain-text 500. Private:
    Ray Serve has no setting for it; it writes ``500.http`` beside HAProxy's config when its
    HAProxy manager starts and HAProxy reads it at each reload, so this must run after
    ``serve.start`` and before the app's replicas are added. False (Ray's page kept) if the
    file does not appear."""
    import glob

    from .errors import envelope

    deadline = time.monotonic() + wait_s
    while not (pages := glob.glob(os.path.join(hap_dir, "*", "500.http"))):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    answer = envelope(503, "replica_unavailable", "the replica handling this request stopped; retry",
                      {"Retry-After": str(retry_after), "Connection": "close"})  # the service's own envelope
    head = "HTTP/1.1 503 Service Unavailable\r\n" + "".join(
        f"{k.decode()}: {v.decode()}\r\n" for k, v in answer.raw_headers) + "\r\n"
    for page in pages:
        Path(page).write_bytes(head.encode() + answer.body)
    return True


def run_on_ray(settings, ready=None) -> None:
    """Deploy and serve until SIGINT/SIGTERM, then delete the app (replicas drain) and shut
    down Serve and, if we started it, the local Ray."""
    t0 = time.monotonic()
    address, replicas, autoscale = settings.address, settings.replicas, settings.autoscale_range
    host, port = settings.host, settings.port
    local = address is None
    temp_dir = tempfile.mkdtemp(prefix="midas-ray-", dir="/tmp") if local else None
    hap_dir = tempfile.mkdtemp(prefix="mh-", dir="/tmp") if local else None
    if hap_dir:  # read by Ray's processes (and Serve's constants) when they start: before the import
        os.environ.update(local_ray_environment(hap_dir, settings.max_query_bytes))

    import ray
    from ray import serve

    from .ray_jobs import NAMESPACE, store_actor

    init = dict(namespace=NAMESPACE, include_dashboard=False, log_to_driver=True)
    if local:  # Ray's private _temp_dir: the only way to keep its files apart from another Ray's
        init |= dict(num_cpus=len(os.sched_getaffinity(0)), _temp_dir=temp_dir)
    ray.init(address=address or "local", **init)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    # SIGHUP (a key reload, as for one process) must not end the driver, whose default it is:
    # each replica re-reads the key file itself within a second of a change
    signal.signal(signal.SIGHUP, lambda *_: print("midas-onnx serve --ray: SIGHUP: the replicas re-read the key "
                                                  "file when it changes; nothing else to do", flush=True))
    try:
        settings = replica_settings(settings)
        store = store_actor(settings, detached=not local)  # noqa: F841 - held: a non-detached actor dies with its last handle
        serve.start(http_options={"host": host, "port": port})
        if hap_dir and os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and not _ingress_error_page(
                hap_dir, settings.retry_after):
            print("midas-onnx serve --ray: HAProxy's error page not found; a failed replica's requests get "
                  "Ray's plain-text 500", file=sys.stderr, flush=True)
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
        if hap_dir:
            _stop_orphaned_haproxy(hap_dir)
        for own in (hap_dir, temp_dir):  # a local Ray's logs and sockets: ours, gone with it
            if own:
                shutil.rmtree(own, ignore_errors=True)
