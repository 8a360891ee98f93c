"""The HTTP service, as a real `midas-onnx serve` process on 127.0.0.1 (not a test client)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from runtime import DepthHeatmapper

from .conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Base(str):
    """The server's base URL; ``output()`` gives what the process printed, once it has exited."""

    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def running_server(model: Path, *args: str, wait_ready: bool = True, env: dict | None = None):
    """A `midas-onnx serve` process; with ``--ray`` among ``args``, ready once every replica
    answers ready (the ingress balances over them, so one ready answer is not enough)."""
    on_ray = "--ray" in args
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="midas-serve-")) / "server.log"
    with open(log, "w") as sink:  # a file, not a pipe: a chatty server never blocks on it
        proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "serve", "--model", str(model), "--port", str(port),
                                 *args], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})})
    base = _Base(f"http://127.0.0.1:{port}")
    base.proc, base.log = proc, log
    try:
        deadline = time.time() + (180 if on_ray else 60)
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(0.1)
        while wait_ready and httpx.get(base + "/readyz").status_code != 200:
            assert time.time() < deadline, "model did not load"
            time.sleep(0.1)
        while on_ray and wait_ready and len(ready_replicas(base)) < int(_arg(args, "--replicas", "2")):
            assert time.time() < deadline, "replicas did not load: " + log.read_text()[-3000:]
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=120 if on_ray else 20)


def _arg(args: tuple, flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args else default


def ready_replicas(base: str, tries: int = 20) -> set[str]:
    """Replicas (their X-Midas-Replica) that answered /readyz 200 in ``tries`` probes."""
    seen = set()
    for _ in range(tries):
        r = httpx.get(base + "/readyz", timeout=10)
        if r.status_code == 200:
            seen.add(r.headers["x-midas-replica"])
    return seen


#: The shared servers run as one process and on Ray Serve (2 replicas of a local Ray): the same
#: app must answer the same requests the same way on both.
SERVER_KINDS = ["process", pytest.param("ray", marks=pytest.mark.ray_serve)]
RAY_ARGS = {"process": (), "ray": ("--ray", "--replicas", "2")}
#: The shared servers answer many tests' deliberate errors, all from 127.0.0.1: not slowed for
#: them (serve.refusals has tests of its own; a Ray replica has no throttle anyway).
SHARED_ARGS = ("--refusal-rate", "0")


def jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request, fixed_model):
    with running_server(fixed_model, "--job-ttl", "2", *SHARED_ARGS, *RAY_ARGS[request.param]) as base:
        base.kind = request.param
        yield base


@pytest.fixture(scope="module")
def expected(fixed_model, photo_set):
    """What the library computes for the same JPEG bytes the tests upload."""
    hm = DepthHeatmapper(fixed_model)
    return {name: hm.predict(jpeg(rgb)) for name, rgb in photo_set.items() if rgb.ndim == 3}


def decode_png(data: bytes, flags=cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert img is not None
    return img


def test_health_ready_and_page(server):
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server + "/readyz").json()
    assert ready["ready"] is True and ready["precision"] == "fp32" and ready["input_size"] == "256x256"
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "Drop photos here" in page.text


def test_depth_png_multipart_and_raw(server, photo_set, expected):
    data = jpeg(photo_set["coffee"])
    r = httpx.post(server + "/v1/depth", files={"file": ("coffee.jpg", data, "image/jpeg")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_png(r.content), expected["coffee"].heatmap)
    raw = httpx.post(server + "/v1/depth", content=data, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200
    np.testing.assert_array_equal(decode_png(raw.content), expected["coffee"].heatmap)


def test_depth_json_depth16_overlay_colormap(server, photo_set, expected):
    data = jpeg(photo_set["chelsea"])
    want = expected["chelsea"]
    j = httpx.post(server + "/v1/depth", content=data, headers={"accept": "application/json", "content-type": "image/jpeg"})
    assert j.status_code == 200
    body = j.json()
    assert (body["width"], body["height"]) == (451, 300)
    assert body["depth"]["max"] == pytest.approx(float(want.depth.max()), rel=1e-5)
    np.testing.assert_array_equal(decode_png(base64.b64decode(body["heatmap_png_base64"])), want.heatmap)

    d16 = httpx.post(server + "/v1/depth?format=depth16", content=data, headers={"content-type": "image/jpeg"})
    depth = decode_png(d16.content, cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (300, 451)
    np.testing.assert_array_equal(depth, want.depth_png16())

    ov = httpx.post(server + "/v1/depth?overlay=true&colormap=turbo&alpha=0.3", content=data,
                    headers={"content-type": "image/jpeg"})
    from runtime.outputs.postprocess import colorize, overlay

    expected_overlay = overlay(want.image, colorize(want.depth, cv2.COLORMAP_TURBO), 0.3)
    np.testing.assert_array_equal(decode_png(ov.content), expected_overlay)


@pytest.mark.parametrize("kwargs, status, code", [
    ({"content": b"not an image at all", "headers": {"content-type": "image/jpeg"}}, 422, "bad_image"),
    ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_body"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    ({"files": {"other": ("a.txt", b"x", "text/plain")}}, 400, "no_file"),
])
def test_bad_requests_get_json_errors(server, kwargs, status, code):
    r = httpx.post(server + "/v1/depth", **kwargs)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


@pytest.mark.parametrize("query, code", [("format=gif", "bad_format"), ("colormap=nope", "bad_colormap"), ("alpha=2", "bad_alpha")])
def test_bad_options(server, photo_set, query, code):
    r = httpx.post(server + f"/v1/depth?{query}", content=jpeg(photo_set["coffee"]), headers={"content-type": "image/jpeg"})
    assert r.status_code == 422 and r.json()["error"]["code"] == code


def test_jobs_progress_results_and_expiry(server, photo_set, expected):
    files = [("file", ("a.jpg", jpeg(photo_set["astronaut"]), "image/jpeg")),
             ("file", ("broken.jpg", b"\xff\xd8\xffjunk", "image/jpeg")),
             ("file", ("c.jpg", jpeg(photo_set["chelsea"]), "image/jpeg"))]
    r = httpx.post(server + "/v1/jobs", files=files)
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    url = server + r.json()["url"]
    deadline = time.time() + 60
    while (job := httpx.get(url).json())["status"] not in ("done", "failed"):
        assert 0.0 <= job["progress"] <= 1.0
        assert time.time() < deadline
        time.sleep(0.05)
    assert job["status"] == "done" and job["progress"] == 1.0 and job["completed"] == 3
    names = [res["name"] for res in job["results"]]
    assert names == ["a.jpg", "broken.jpg", "c.jpg"]
    assert job["results"][1]["error"]["code"] == "bad_image"
    heat = decode_png(base64.b64decode(job["results"][2]["heatmap_png_base64"]))
    assert heat.shape == expected["chelsea"].heatmap.shape
    assert 0 < job["expires_in_s"] <= 2  # server runs with --job-ttl 2
    deadline = time.time() + 30
    while (gone := httpx.get(url)).status_code == 200:
        assert time.time() < deadline, "job never expired"
        time.sleep(0.1)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "no_such_job"


def test_concurrent_clients_and_a_corrupt_upload(server, photo_set, expected):
    names = ["astronaut", "coffee", "chelsea", "rocket"] * 3
    uploads = [(n, jpeg(photo_set[n])) for n in names] + [("corrupt", b"\x89PNG\r\n\x1a\nbroken")]

    def send(item):
        name, data = item
        return name, httpx.post(server + "/v1/depth", content=data, headers={"content-type": "image/jpeg"}, timeout=60)

    before = scrape_replicas(server)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, uploads))
    for name, r in results:
        if name == "corrupt":
            assert r.status_code == 422
            continue
        assert r.status_code == 200, r.text
        heat = decode_png(r.content)
        want = expected[name].heatmap
        assert heat.shape == want.shape
        # batched with others: float rounding may move a pixel by one colormap level
        assert np.abs(heat.astype(int) - want).max() <= 8 and (heat == want).mean() > 0.99
    after = scrape_replicas(server)
    delta = lambda key: sum(after[r].get(key, 0) - before[r].get(key, 0) for r in after)  # noqa: E731
    assert delta(("midas_requests_total", ("key", "-"), ("route", "/v1/depth"), ("status", "200"))) == 12
    assert delta(("midas_requests_total", ("key", "-"), ("route", "/v1/depth"), ("status", "422"))) == 1
    assert delta(("midas_request_seconds_count", ("route", "/v1/depth"))) == 13
    for stage in ("queue", "decode", "render"):  # the corrupt upload is refused from its header: never decoded
        assert delta(("midas_stage_seconds_count", ("stage", stage))) == 12, stage
    assert 0 < delta(("midas_stage_seconds_count", ("stage", "inference"))) <= 12
    assert delta(("midas_batch_size_sum",)) == 12
    for one in after.values():  # each replica's own scrape
        assert one[("midas_requests_in_flight",)] == 1  # this scrape
        assert one[("process_resident_memory_bytes",)] > 50e6 and one[("process_cpu_seconds_total",)] > 0
        assert ("midas_jobs", ("state", "running")) in one and ("midas_queue_depth",) in one


def scrape_replicas(base: str, headers: dict | None = None) -> dict[str, dict[tuple, float]]:
    """Each replica's /metrics by its X-Midas-Replica (one process: one entry). Under --ray the
    ingress balances scrapes too, so this scrapes until every replica has answered."""
    want = 2 if getattr(base, "kind", "process") == "ray" else 1
    seen: dict[str, dict[tuple, float]] = {}
    for _ in range(200):
        r = httpx.get(base + "/metrics", headers=headers)
        seen.setdefault(r.headers.get("x-midas-replica", "one"), sample(r.text))
        if len(seen) == want:
            return seen
    raise AssertionError(f"only {len(seen)} of {want} replicas answered /metrics")


def sample(text: str) -> dict[tuple, float]:
    """Prometheus text -> {(sample name, *sorted label pairs): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_limits(fixed_model, photo_set):
    """Body and pixel limits answer 413 with JSON. (Overload, 503 + Retry-After, is made
    deterministic in test_serve_hardening.py, where inference can be held still.)"""
    with running_server(fixed_model, "--max-body-mb", "0.2", "--max-pixels", "200000") as base:
        big = httpx.post(base + "/v1/depth", content=b"\xff" * 300_000, headers={"content-type": "image/jpeg"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
        pixels = httpx.post(base + "/v1/depth", content=jpeg(photo_set["astronaut"]), headers={"content-type": "image/jpeg"})
        assert pixels.status_code == 413 and pixels.json()["error"]["code"] == "too_many_pixels"


def test_access_log_one_line_per_request_unless_quiet(fixed_model, photo_set):
    data = jpeg(photo_set["chelsea"])
    for quiet in (False, True):
        with running_server(fixed_model, *(["--quiet"] if quiet else [])) as base:
            r = httpx.post(base + "/v1/depth", content=data, headers={"content-type": "image/jpeg"}, timeout=60)
            assert r.status_code == 200
            httpx.get(base + "/v1/jobs/nope")
        output = base.output()
        lines = [line for line in output.splitlines() if "POST /v1/depth" in line or "GET /v1/jobs/nope" in line]
        if quiet:
            assert lines == [], output
        else:
            assert len(lines) == 2, output
            assert re.search(rf"POST /v1/depth 200 [\d.]+ms {len(r.content)}B$", lines[0]), lines[0]
            assert re.search(r"GET /v1/jobs/nope 404 [\d.]+ms \d+B$", lines[1]), lines[1]


def test_model_that_fails_to_load(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with running_server(junk, wait_ready=False) as base:
        deadline = time.time() + 20
        while (ready := httpx.get(base + "/readyz")).json()["error"]["code"] != "model_failed":
            assert time.time() < deadline
            time.sleep(0.1)
        assert ready.status_code == 503 and "is not a usable ONNX model" in ready.json()["error"]["message"]
        r = httpx.post(base + "/v1/depth", content=b"x", headers={"content-type": "image/jpeg"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed"


def test_unknown_job(server):
    r = httpx.get(server + "/v1/jobs/doesnotexist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_such_job"
