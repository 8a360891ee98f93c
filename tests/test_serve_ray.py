"""`midas-onnx serve --ray`: the same app on Ray Serve, 2 replicas of a local Ray; jobs any
replica answers; a replica killed (SIGKILL) under load."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from serve.jobs import JobStore, TooManyJobs

from .conftest import REPO
from .test_serve import free_port

pytest.importorskip("ray.serve")

PNG = b"\x89PNG\r\n\x1a\n"


def jpeg(h: int = 240, w: int = 320, seed: int = 0) -> bytes:
    return cv2.imencode(".jpg", np.random.RandomState(seed).randint(0, 255, (h, w, 3), np.uint8))[1].tobytes()


# -- the store's state, without Ray -------------------------------------------------------------
def test_store_bounds_ttl_and_lost_lease(monkeypatch):
    """The actor's class is the in-process store's: bounds, TTL, and a lost lease's images
    reported failed."""
    import json

    clock = [100.0]
    monkeypatch.setattr("serve.jobs.time.monotonic", lambda: clock[0])
    s = JobStore(ttl_s=10, max_jobs=2, max_bytes=1000, max_per_key=2, lease_s=5)
    a = s.create(2, 300, "-", "r1")
    b = s.create(1, 600, "-", "r2")
    assert a and b and s.held == 900
    with pytest.raises(TooManyJobs):  # count bound
        s.create(1, 0, "-", "r1")
    assert s.add(a, 0, {"name": "x", "heatmap_png_base64": "z" * 500}, 500, 150)  # 900 + 350 > 1000: dropped
    assert s.view(a).head["completed"] == 1 and s.held == 750
    s.heartbeat([a])
    clock[0] += 4
    s.expire()
    assert s.view(a).head["status"] == "queued"  # lease renewed 4 s ago, not lost
    s.add(b, 0, {"name": "y"}, 100, 600)
    s.finish(b)
    clock[0] += 6  # a's lease (last renewed at 100) is lost: its image not done fails
    view = s.view(a)
    results = json.loads(view.results)
    assert view.head["status"] == "done" and view.head["completed"] == 2
    assert results[0]["error"]["code"] == "job_store_full"
    assert results[1]["error"]["code"] == "replica_lost"
    assert s.view(b).head["status"] == "done"
    clock[0] += 7
    assert s.view(b) is None and s.view(a) is not None  # b finished at 104 -> gone after 114; a at 110
    clock[0] += 5
    assert s.view(a) is None and s.held == 0 and len(s) == 0


# -- a real local Ray ----------------------------------------------------------------------------
def stop(proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """SIGTERM (the graceful stop under test), then SIGKILL if it does not end in time."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Until ``base`` answers /readyz 200; the process's output if it dies or never does."""
    deadline = time.time() + timeout_s
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        assert time.time() < deadline, "not ready: " + log.read_text()[-3000:]
        time.sleep(0.5)


@contextlib.contextmanager
def ray_server(model: Path, *args: str):
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="midas-serve-ray-")) / "server.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "serve", "--ray", "--model", str(model),
                                 "--port", str(port), *args], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "MIDAS_ONNX_JOB_LEASE": "3"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield base, proc, log
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def ray_base(fixed_model):
    with ray_server(fixed_model, "--replicas", "2") as (base, proc, log):
        yield base, proc, log
    assert proc.returncode == 0, log.read_text()[-3000:]


def replica_pids(base: str, want: int = 2, tries: int = 40) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        r = httpx.get(base + "/readyz", timeout=10)
        if r.status_code == 200:
            seen.add(int(r.headers["x-midas-replica"]))
        if len(seen) >= want:
            break
    return seen


def test_depth_png_and_jobs_any_replica_answers(ray_base):
    base = ray_base[0]
    r = httpx.post(base + "/v1/depth", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, timeout=60)
    assert r.status_code == 200 and r.content.startswith(PNG), r.text[:300]
    assert httpx.get(base + "/v1/depth", timeout=10).status_code == 405  # the same app's routes and errors
    assert httpx.get(base + "/v1/jobs/nope", timeout=10).json()["error"]["code"] == "no_such_job"

    r = httpx.post(base + "/v1/jobs", files=[("file", (f"{i}.jpg", jpeg(seed=i), "image/jpeg")) for i in range(3)],
                   timeout=60)
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    answered_by, deadline = set(), time.time() + 60
    while True:
        g = httpx.get(base + f"/v1/jobs/{jid}", timeout=10)
        assert g.status_code == 200, g.text
        answered_by.add(g.headers["x-midas-replica"])
        if g.json()["status"] == "done" and len(answered_by) >= 2:
            break
        assert time.time() < deadline, (g.json(), answered_by)
        time.sleep(0.05)
    job = g.json()
    assert job["completed"] == 3 and all("heatmap_png_base64" in e for e in job["results"])
    assert len(replica_pids(base)) == 2
    log = ray_base[2]  # the replicas' access log reaches the driver's output, as one process writes it
    deadline = time.time() + 30
    while not re.search(r"POST /v1/depth 200 .*\n(.*\n)*.*GET /v1/jobs/nope 404", log.read_text()):
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def test_websocket_under_ray(ray_base):
    """The stream through HAProxy to a replica, with the CLI's WebSocket bounds in the
    replica's uvicorn (Serve starts it with its own: permessage-deflate on, 16 MiB messages)."""
    import json

    from websockets.sync.client import connect

    base = ray_base[0].replace("http://", "ws://") + "/v1/stream"
    with connect(base, compression="deflate", max_size=None) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        ws.send(jpeg(120, 160))
        meta = json.loads(ws.recv(timeout=60))
        assert "error" not in meta and (meta["width"], meta["height"]) == (160, 120), meta
        assert isinstance(ws.recv(timeout=60), bytes)
        ws.send(b"\x00" * (17 * 2**20))  # over uvicorn's 16 MiB, under --max-body-mb 20: the service answers it
        assert json.loads(ws.recv(timeout=60))["error"]["code"] == "bad_image"


def test_sighup_does_not_end_the_driver(ray_base):
    """SIGHUP reloads keys in one process; it ended the --ray driver (its default action)."""
    base, proc, log = ray_base
    proc.send_signal(signal.SIGHUP)
    time.sleep(2)
    assert proc.poll() is None, log.read_text()[-2000:]
    assert httpx.get(base + "/readyz", timeout=10).status_code == 200


def test_replica_killed_under_load(ray_base):
    base = ray_base[0]
    body = jpeg(480, 640)
    r = httpx.post(base + "/v1/jobs", files=[("file", (f"{i}.jpg", body, "image/jpeg")) for i in range(16)],
                   timeout=60)
    assert r.status_code == 202, r.text
    jid, victim = r.json()["id"], int(r.headers["x-midas-replica"])
    outcomes: collections.Counter = collections.Counter()
    bad: list[str] = []
    stop = time.monotonic() + 10

    def post(c: httpx.Client) -> httpx.Response:
        return c.post(base + "/v1/depth", files={"file": ("a.jpg", jpeg(), "image/jpeg")})

    def client(_):
        with httpx.Client(timeout=30) as c:  # a hang is a timeout: counted as bad
            while time.monotonic() < stop:
                try:
                    g = post(c)
                except httpx.RemoteProtocolError as exc:
                    # HAProxy reloads when a replica goes and comes; a kept-alive connection it
                    # closes as a request arrives is retried, as browsers do (RFC 9112 9.3.1)
                    if "without sending a response" not in str(exc):
                        bad.append(repr(exc))
                        continue
                    outcomes["closed_then_retried"] += 1
                    with httpx.Client(timeout=30) as fresh:
                        try:
                            g = post(fresh)
                        except httpx.HTTPError as exc2:
                            bad.append("retry: " + repr(exc2))
                            continue
                except httpx.HTTPError as exc:
                    bad.append(repr(exc))
                    continue
                if g.status_code == 200 and g.content.startswith(PNG):
                    outcomes["png"] += 1
                elif g.status_code >= 500 and g.headers.get("content-type", "").startswith("application/json"):
                    outcomes[g.json()["error"]["code"]] += 1
                else:
                    bad.append(f"{g.status_code} {g.text[:300]}")

    killer = threading.Timer(1.0, os.kill, (victim, signal.SIGKILL))
    killer.start()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(client, range(6)))
    killer.join()
    assert not bad, (bad[:5], outcomes)
    assert outcomes["png"] > 0
    # in flight on the killed replica: the ingress's own answer, the service's 503 envelope
    assert set(outcomes) <= {"png", "replica_unavailable", "closed_then_retried", "loading", "busy", "worker_died",
                             "timeout"}, outcomes
    assert outcomes["closed_then_retried"] <= 12, outcomes  # at most once per client and reload (2)

    deadline = time.time() + 120  # the replica comes back: two live replicas, neither the victim
    while True:
        pids = replica_pids(base, tries=20)
        if len(pids) == 2 and victim not in pids:
            break
        assert time.time() < deadline, pids
        time.sleep(1)
    r = httpx.post(base + "/v1/depth", content=jpeg(), timeout=60)
    assert r.status_code == 200 and r.content.startswith(PNG)

    deadline = time.time() + 60  # the job: finished, each image a result or replica_lost (lease 3 s)
    while (job := httpx.get(base + f"/v1/jobs/{jid}", timeout=10).json())["status"] not in ("done", "failed"):
        assert time.time() < deadline, job
        time.sleep(0.5)
    assert job["status"] == "done" and job["completed"] == 16, job
    codes = [("ok" if "heatmap_png_base64" in e else e["error"]["code"]) for e in job["results"]]
    assert set(codes) <= {"ok", "replica_lost"}, codes


def test_ray_flags_need_ray(fixed_model):
    out = subprocess.run([sys.executable, "-m", "midas_onnx", "serve", "--model", str(fixed_model),
                          "--autoscale", "1:2"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "need --ray" in out.stderr
    out = subprocess.run([sys.executable, "-m", "midas_onnx", "serve", "--ray", "--model", str(fixed_model),
                          "--autoscale", "3:1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "MIN:MAX" in out.stderr


def test_removed_replicas_drain_their_jobs(ray_base):
    """Replicas had no drain: deleting the app (SIGTERM to the driver) or a scale-in removed a
    replica with its running job. Serve's graceful shutdown drains each replica now; this
    test stops the module's server."""
    base, proc, log = ray_base
    files = [("file", (f"{k}.jpg", jpeg(480, 640, seed=k), "image/jpeg")) for k in range(8)]
    r = httpx.post(base + "/v1/jobs", files=files, timeout=60)
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    assert httpx.get(base + r.json()["url"], timeout=10).json()["completed"] < 8
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert f"job {jid} done: 8 image(s), 0 error(s)" in out, out[-3000:]
    assert "drain timeout" not in out


def test_joins_a_cluster_and_autoscales_with_load(fixed_model):
    """``--address`` joins a running Ray (Ray's Python proxy here: the cluster was started
    without the HAProxy settings) and ``--autoscale 1:2`` starts one replica, adds the second
    under sustained load, and the driver leaves the cluster running when it stops."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="midas-serve-ray-")) / "server.log"
    try:
        with open(log, "w") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "serve", "--ray", "--model", str(fixed_model),
                                     "--address", cluster.address, "--autoscale", "1:2", "--port", str(port)],
                                    cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        wait_ready(base, proc, log)
        assert len(replica_pids(base, want=2, tries=20)) == 1  # the minimum, before any load

        stop, seen = threading.Event(), set()

        def client(_):
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    r = c.post(base + "/v1/depth", content=jpeg(), headers={"content-type": "image/jpeg"})
                    if r.status_code == 200:
                        seen.add(r.headers["x-midas-replica"])

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client, i) for i in range(8)]
            deadline = time.time() + 120
            while len(seen) < 2 and time.time() < deadline and not any(f.done() for f in futures):
                time.sleep(0.5)
            stop.set()
            for f in futures:
                f.result()  # a client's failure is the test's
        assert len(seen) == 2, f"never scaled to 2 replicas: {seen}; " + log.read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        import ray

        ray.init(address=cluster.address)
        try:
            assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2  # the cluster lives on
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


DEPLOY_WITH_RAY_TOOLS = """
import signal, sys, threading, ray
from ray import serve
from serve.ray_deploy import app_builder
ray.init(num_cpus=2, include_dashboard=False)
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
serve.run(app_builder({"replicas": 1}), name="midas", route_prefix="/", blocking=False)
print("deployed", flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait()
serve.shutdown()
ray.shutdown()
"""


def test_app_builder_is_what_a_rayservice_deploys(fixed_model):
    """``import_path: serve.ray_deploy:app_builder`` (a RayService, ``serve run``): settings
    from the environment, the job store created, the same routes."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="midas-serve-ray-")) / "builder.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", DEPLOY_WITH_RAY_TOOLS, str(port)], cwd=REPO, stdout=sink,
                                stderr=subprocess.STDOUT, env={**os.environ, "MIDAS_ONNX_MODEL": str(fixed_model),
                                                               "MIDAS_ONNX_MAX_BODY_MB": "1"})
    try:
        wait_ready(base, proc, log)
        r = httpx.post(base + "/v1/jobs", files=[("file", ("a.jpg", jpeg(), "image/jpeg"))], timeout=60)
        assert r.status_code == 202, r.text
        deadline = time.time() + 60
        while (job := httpx.get(base + r.json()["url"], timeout=10).json())["status"] != "done":
            assert time.time() < deadline, job
            time.sleep(0.2)
        assert "heatmap_png_base64" in job["results"][0]
        big = httpx.post(base + "/v1/depth", content=b"\xff" * 1_100_000, headers={"content-type": "image/jpeg"},
                         timeout=60)
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"  # the environment's limit
    finally:
        stop(proc)


@pytest.mark.parametrize("text", ["3:1", "0:2", "2", "1:2:3", "a:b", ""])
def test_autoscale_text_is_checked_for_the_cli_and_the_builder_alike(text):
    from serve.settings import parse_autoscale

    assert parse_autoscale("1:8") == (1, 8)
    with pytest.raises(ValueError, match="MIN:MAX"):
        parse_autoscale(text)
