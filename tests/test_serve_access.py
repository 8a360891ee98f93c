"""Access control (issue 26) against real `midas-onnx serve` processes on 127.0.0.1: keys,
key reloads, Host allow-list, cross-site browser requests, CORS, per-key limits, and the
refusal to serve beyond loopback without keys."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import REPO
from .test_serve import RAY_ARGS, SERVER_KINDS, SHARED_ARGS, free_port, jpeg, running_server, sample, scrape_replicas
from .test_serve_hardening import wait_until

KEY_A, KEY_B = "alpha-key-7f3e9c1d2b-Qm4Zt8Wk", "bravo-key-0a8b6c4e1f-Lp2Xv6Rn"
SECRET = "key-id-secret-for-tests"
JPEG = {"content-type": "image/jpeg"}


def kid(key: str) -> str:
    """A key's id as the servers here derive it (MIDAS_ONNX_KEY_ID_SECRET=SECRET)."""
    return hmac.new(SECRET.encode(), key.encode(), hashlib.sha256).hexdigest()[:8]


def bearer(key: str, **more) -> dict:
    return {"authorization": f"Bearer {key}", **more}


@contextlib.contextmanager
def keyed_server(model, keys, *more):
    keys.write_text(f"# service keys\n{KEY_A}\n")
    with running_server(model, "--api-key-file", str(keys), "--key-rate", "3", "--key-concurrency", "1",
                        "--cors-origin", "https://app.example", *more,
                        env={"MIDAS_ONNX_API_KEYS": KEY_B, "MIDAS_ONNX_KEY_ID_SECRET": SECRET}) as base:
        base.keys = keys
        yield base


@pytest.fixture(scope="module")
def keyed(fixed_model, tmp_path_factory):
    """One process: its log, its signals and its per-key limits are what some tests read."""
    with keyed_server(fixed_model, tmp_path_factory.mktemp("keys") / "keys.txt", *SHARED_ARGS) as base:
        yield base


@pytest.fixture(scope="module", params=SERVER_KINDS)
def keyed_any(request, fixed_model, tmp_path_factory):
    """The same keyed service as one process and on Ray Serve (each replica checks keys,
    hosts and origins itself)."""
    with keyed_server(fixed_model, tmp_path_factory.mktemp("keys") / "keys.txt", *SHARED_ARGS,
                      *RAY_ARGS[request.param]) as base:
        base.kind = request.param
        yield base


def test_no_key_wrong_key_right_key(keyed_any, photo_set):
    data = jpeg(photo_set["chelsea"])
    none = httpx.post(keyed_any + "/v1/depth", content=data, headers=JPEG)
    assert none.status_code == 401 and none.json()["error"]["code"] == "unauthorized"
    assert none.headers["www-authenticate"] == 'Bearer realm="midas-onnx"'
    wrong = httpx.post(keyed_any + "/v1/depth", content=data, headers=bearer(KEY_A + "x", **JPEG))
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert httpx.post(keyed_any + "/v1/depth", content=data, headers=bearer(KEY_B, **JPEG), timeout=60).status_code == 200
    time.sleep(0.4)  # one request per key at --key-rate 3 bursts fine; keep the two tests apart
    # open routes: liveness, readiness (says keys are on) and the page; metrics need a key
    assert httpx.get(keyed_any + "/healthz").status_code == 200
    assert httpx.get(keyed_any + "/readyz").json()["auth"] is True
    assert httpx.get(keyed_any + "/").status_code == 200
    assert httpx.get(keyed_any + "/metrics").status_code == 401
    metrics = scrape_replicas(keyed_any, bearer(KEY_A))
    total = lambda key: sum(m.get(key, 0) for m in metrics.values())  # noqa: E731
    assert total(("midas_requests_total", ("key", kid(KEY_B)), ("route", "/v1/depth"), ("status", "200"))) >= 1
    assert total(("midas_refused_total", ("key", "-"), ("reason", "unauthorized"))) >= 2


def test_keys_never_logged_only_their_ids(keyed):
    httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_A))
    time.sleep(0.2)
    out = keyed.log.read_text()
    assert KEY_A not in out and KEY_B not in out
    assert f"GET /v1/jobs/x 404" in out and f"key={kid(KEY_A)}" in out


def test_key_file_reloads_on_change_and_on_sighup(keyed):
    new = "charlie-key-5d4c3b2a19-Hs7Jd3Fq"
    keyed.keys.write_text(f"{new}\n{KEY_A}x\n")  # KEY_A replaced; size and mtime change
    wait_until(lambda: httpx.get(keyed + "/v1/jobs/x", headers=bearer(new)).status_code == 404, "reload on mtime",
               timeout=10)
    assert httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_A)).status_code == 401
    assert httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_B)).status_code == 404  # env keys stay
    # same size, same mtime: only SIGHUP makes the server look again
    stat = keyed.keys.stat()
    keyed.keys.write_text(f"{KEY_A}\n{new[:-1]}y\n"[: stat.st_size].ljust(stat.st_size, "#"))
    os.utime(keyed.keys, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(1.5)
    assert httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_A)).status_code == 401  # not re-read yet
    keyed.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_A)).status_code == 404, "reload on SIGHUP",
               timeout=10)
    keyed.keys.write_text(f"# service keys\n{KEY_A}\n")
    time.sleep(1.5)


def test_foreign_host_is_refused(keyed_any):
    """A DNS-rebinding page reaches the server under its own name."""
    r = httpx.get(keyed_any + "/v1/jobs/x", headers={"host": "evil.example:8000", **bearer(KEY_B)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_host"
    assert httpx.get(keyed_any + "/v1/jobs/x", headers={"host": "localhost", **bearer(KEY_B)}).status_code == 404
    # probes are exempt: load balancers and orchestrators send the pod's address
    assert httpx.get(keyed_any + "/readyz", headers={"host": "10.1.2.3:8000"}).status_code == 200
    assert httpx.get(keyed_any + "/healthz", headers={"host": "10.1.2.3:8000"}).status_code == 200


def test_cross_site_post_is_refused_and_cors_origin_gets_cors(keyed_any, photo_set):
    data = jpeg(photo_set["chelsea"])
    browser = {"origin": "https://evil.example", "sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors",
               "content-type": "multipart/form-data; boundary=x"}
    r = httpx.post(keyed_any + "/v1/depth", content=b"--x--", headers=browser | bearer(KEY_B))
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
    no_origin = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors", "content-type": "image/jpeg"}
    assert httpx.post(keyed_any + "/v1/depth", content=data, headers=no_origin | bearer(KEY_B)).status_code == 403
    # the allowed origin: a preflight without a key, then the call with one, both with CORS headers
    pre = httpx.options(keyed_any + "/v1/depth", headers={"origin": "https://app.example",
                                                      "access-control-request-method": "POST",
                                                      "access-control-request-headers": "authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    ok = httpx.post(keyed_any + "/v1/depth", content=data, timeout=60,
                    headers=bearer(KEY_B, origin="https://app.example", **JPEG))
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
    # same-origin page requests pass
    same = httpx.get(keyed_any + "/v1/jobs/x", headers=bearer(KEY_B, origin=keyed_any, **{"sec-fetch-site": "same-origin"}))
    assert same.status_code == 404


def test_per_key_rate_and_concurrency_give_429(keyed):
    time.sleep(1.5)  # refill
    codes = [httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_A)) for _ in range(12)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_B)).status_code == 404  # others unaffected
    time.sleep(1.5)
    # concurrency 1: a slow upload holds KEY_A's one slot
    host, port = keyed.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /v1/depth HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\n"
                 f"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n".encode() + b"\xff\xd8\xff")
    time.sleep(0.3)
    try:
        busy = httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_A))
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert httpx.get(keyed + "/v1/jobs/x", headers=bearer(KEY_B)).status_code == 404
    finally:
        sock.close()
    metrics = sample(httpx.get(keyed + "/metrics", headers=bearer(KEY_B)).text)
    assert metrics[("midas_refused_total", ("key", kid(KEY_A)), ("reason", "rate_limited"))] >= 2


def test_open_loopback_server_still_refuses_cross_site_posts(fixed_model, photo_set):
    """No keys on loopback: a page on any site could otherwise POST images to it."""
    with running_server(fixed_model) as base:
        r = httpx.post(base + "/v1/depth", content=jpeg(photo_set["chelsea"]),
                       headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site", **JPEG})
        assert r.status_code == 403
        assert httpx.get(base + "/v1/jobs/x", headers={"host": "rebound.evil.example"}).status_code == 400
        assert httpx.post(base + "/v1/depth", content=jpeg(photo_set["chelsea"]), headers=JPEG,
                          timeout=60).status_code == 200


def test_refuses_to_bind_beyond_loopback_without_keys(fixed_model):
    env = {k: v for k, v in os.environ.items() if k != "MIDAS_ONNX_API_KEYS"}
    out = subprocess.run([sys.executable, "-m", "midas_onnx", "serve", "--model", str(fixed_model), "--host", "0.0.0.0",
                          "--port", str(free_port())], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "refusing to serve on 0.0.0.0 without API keys" in out.stderr
    assert "--api-key-file" in out.stderr and "--insecure-no-auth" in out.stderr


def test_beyond_loopback_with_keys_starts_and_asks_for_them(fixed_model, photo_set):
    with running_server(fixed_model, "--host", "0.0.0.0", env={"MIDAS_ONNX_API_KEYS": KEY_A}) as base:
        assert httpx.post(base + "/v1/depth", content=jpeg(photo_set["chelsea"]), headers=JPEG).status_code == 401
        assert httpx.post(base + "/v1/depth", content=jpeg(photo_set["chelsea"]), headers=bearer(KEY_A, **JPEG),
                          timeout=60).status_code == 200


def _outward_address() -> str | None:
    """This machine's address towards other hosts (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_factory_without_keys_serves_loopback_only(fixed_model):
    """`uvicorn --factory` binds where uvicorn is told, so the app itself refuses requests that
    arrived on a non-loopback address when it has no keys (the CLI refuses to start instead)."""
    outward = _outward_address()
    if outward is None:
        pytest.skip("no non-loopback address on this machine")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MIDAS_ONNX_API_KEYS"} | {"MIDAS_ONNX_MODEL": str(fixed_model)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "serve.app:app_from_env", "--host", "0.0.0.0",
                             "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        local = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(local + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "factory server up")
        assert httpx.get(local + "/v1/jobs/x").status_code == 404
        remote = httpx.get(f"http://{outward}:{port}/v1/jobs/x", headers={"host": "localhost"})
        assert remote.status_code == 403 and remote.json()["error"]["code"] == "keys_required"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_key_guesser_is_slowed(fixed_model, tmp_path, photo_set):
    """Wrong keys are refusals like any other: past the burst, one guess per token, each
    answer held until then; a client at another address with the right key is not slowed."""
    with keyed_server(fixed_model, tmp_path / "keys.txt", "--refusal-burst", "5", "--refusal-rate", "1") as base, \
            httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=30) as guesser:
        t = time.perf_counter()
        codes = [guesser.post(base + "/v1/depth", content=b"x", headers=bearer(f"guess-{i}", **JPEG)).status_code
                 for i in range(8)]
        took = time.perf_counter() - t
        right = httpx.post(base + "/v1/depth", content=jpeg(photo_set["chelsea"]), headers=bearer(KEY_B, **JPEG),
                           timeout=60)
    assert codes[:5] == [401] * 5 and 429 in codes[5:], codes
    assert took > 1.0, took  # eight guesses at full speed take milliseconds
    assert right.status_code == 200
