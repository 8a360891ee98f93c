"""The container image: the repository's Dockerfile built with podman from a Debian base made
here (tests/container_tools.py), then run.

The build is the real multi-stage build but for its export stage, which PyTorch's CPU build
(not downloadable here) would run: ``--build-context export=`` gives it the model the test
fixtures export instead. The quantize stage (calibrated on the fixtures' photos through the
calibration context, to keep CI short), the torch-free runtime and all after it run as a
user's ``docker build .`` runs them. Everything made here is named after this run and
removed at the end; podman missing is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from midas_onnx import __version__

from .conftest import REPO
from .container_tools import Podman, base_image, build, podman
from .test_serve import jpeg, running_server, sample
from .test_serve_hardening import wait_until

TARGET_BYTES = 500_000_000  # the runtime image, uncompressed
RUN_ID = secrets.token_hex(4)
IMAGE = f"localhost/midas-onnx-test:{RUN_ID}"
KEY = "container-test-" + secrets.token_hex(8)
KEY_PATH = "/run/secrets/midas-onnx-keys"
USER_ID = 10001
JPEG = {"content-type": "image/jpeg"}


#: Times measured by the fixtures, printed by the tests (a module fixture has no capsys).
FIGURES: dict[str, str] = {}


def report(capsys, *lines: str) -> None:
    """Figures in the test run's output, shown even when output is captured."""
    with capsys.disabled():
        print("", *lines, sep="\n")


@pytest.fixture(scope="module")
def pm() -> Podman:
    return podman()


@pytest.fixture(scope="module")
def image(pm, fixed_model, calib_dir, tmp_path_factory):
    t0 = time.monotonic()
    base = base_image(pm)
    FIGURES["base"] = f"container base image ready in {time.monotonic() - t0:.0f} s"
    exported = tmp_path_factory.mktemp("export-stage")
    (exported / "models").mkdir()
    shutil.copy(fixed_model, exported / "models" / "midas_small.onnx")
    log = tmp_path_factory.mktemp("build") / "build.log"
    t0 = time.monotonic()
    build(pm, REPO, IMAGE, log, {"BASE": base}, {"export": exported, "calibration": calib_dir})
    FIGURES["build"] = f"container image {IMAGE} built in {time.monotonic() - t0:.0f} s (log: {log})"
    yield IMAGE
    pm("rmi", "--force", IMAGE, check=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """A key file as the docs say to mount it: owned by the image's user, mode 0400."""
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(KEY + "\n")
    shutil.chown(path, USER_ID, USER_ID)
    path.chmod(0o400)
    return path


@contextlib.contextmanager
def container(pm: Podman, role: str, *run_args: str, command: tuple[str, ...] = ()):
    """A detached container of IMAGE with port 8000 published on a free loopback port;
    yields (name, base URL); removed afterwards whatever happened."""
    name = f"midas-onnx-test-{RUN_ID}-{role}"
    pm("run", "--detach", "--name", name, "--publish", "127.0.0.1::8000", *run_args, IMAGE, *command)
    try:
        port = pm.out("port", name, "8000/tcp").rsplit(":", 1)[1]
        yield name, f"http://127.0.0.1:{port}"
    finally:
        pm("rm", "--force", "--time", "0", name, check=False)


def wait_ready(pm: Podman, name: str, base: str, timeout_s: float = 180) -> float:
    """Seconds until /readyz answers 200; the container's log if it exits or never does."""
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        running = pm.out("inspect", "--format", "{{.State.Running}}", name) == "true"
        assert running and time.monotonic() - t0 < timeout_s, pm("logs", name, check=False).stderr[-3000:]
        time.sleep(0.2)


def with_keys(keys: Path) -> tuple[str, ...]:
    return ("--volume", f"{keys}:{KEY_PATH}:ro", "--env", f"MIDAS_ONNX_API_KEY_FILE={KEY_PATH}")


@pytest.fixture(scope="module")
def served(pm, image, keys):
    with container(pm, "keys", *with_keys(keys)) as (name, base):
        FIGURES["ready"] = f"container serve: start to /readyz 200 in {wait_ready(pm, name, base):.1f} s"
        yield name, base


def test_image_is_this_checkout_non_root_labelled_and_small(pm, image, capsys):
    assert pm.out("run", "--rm", image, "--version") == f"midas-onnx, version {__version__}"
    info = pm.out("image", "inspect", "--format",
                  "{{.Size}}|{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Healthcheck.Test}}", image)
    size, user, entrypoint, healthcheck = info.split("|")
    labels = {k: pm.out("image", "inspect", "--format", f'{{{{index .Labels "org.opencontainers.image.{k}"}}}}', image)
              for k in ("version", "licenses")}
    license_text = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"]
    report(capsys, FIGURES["base"], FIGURES["build"],
           f"container image size: {int(size) / 1e6:.1f} MB uncompressed (target {TARGET_BYTES / 1e6:.0f} MB)")
    assert int(size) <= TARGET_BYTES
    assert labels == {"version": __version__, "licenses": license_text}
    assert user == f"{USER_ID}:{USER_ID}"
    assert entrypoint == '["midas-onnx"]'  # exec form: SIGTERM reaches the server, not a shell
    assert "/healthz" in healthcheck


def test_runtime_has_no_torch_no_installer_and_no_compiler(pm, image):
    torch = pm("run", "--rm", "--entrypoint", "python3", image, "-c", "import torch", check=False)
    assert torch.returncode == 1 and "No module named 'torch'" in torch.stderr
    found = pm.out("run", "--rm", "--entrypoint", "python3", image, "-c",
                   "import importlib.util as u, shutil; "
                   "print([m for m in ('torch', 'torchvision', 'timm', 'onnx', 'pip', 'setuptools') if u.find_spec(m)], "
                   "[t for t in ('gcc', 'cc', 'c++', 'ld', 'strip', 'make') if shutil.which(t)])")
    assert found == "[] []"


def test_beyond_loopback_it_needs_keys_or_an_explicit_insecure_no_auth(pm, image, photo_set):
    name = f"midas-onnx-test-{RUN_ID}-refused"
    try:
        refused = pm("run", "--name", name, image, check=False, timeout=120)  # a server would run on
    finally:
        pm("rm", "--force", "--time", "0", name, check=False)
    assert refused.returncode == 1
    assert "refusing to serve on 0.0.0.0 without API keys" in refused.stderr
    for role, args, command in (("open-env", ("--env", "MIDAS_ONNX_INSECURE_NO_AUTH=1"), ()),
                                ("open-flag", (), ("serve", "--insecure-no-auth"))):
        with container(pm, role, *args, command=command) as (name, base):
            wait_ready(pm, name, base)
            r = httpx.post(base + "/v1/depth", content=jpeg(photo_set["chelsea"]), headers=JPEG, timeout=120)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", (role, r.text)


def test_serves_with_mounted_keys_exactly_what_the_host_serves(pm, served, photo_set, tmp_path, capsys):
    name, base = served
    report(capsys, FIGURES["ready"])
    assert httpx.get(base + "/healthz").status_code == 200
    assert pm("healthcheck", "run", name, check=False).returncode == 0  # the image's own HEALTHCHECK
    pid = pm.out("inspect", "--format", "{{.State.Pid}}", name)
    uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split("\n")[0].split()
    assert uids == [str(USER_ID)] * 4  # the server itself, as the host's kernel sees it

    body = jpeg(photo_set["coffee"])
    refused = httpx.post(base + "/v1/depth", content=body, headers=JPEG, timeout=120)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    answer = httpx.post(base + "/v1/depth", content=body, headers={**JPEG, "authorization": f"Bearer {KEY}"},
                        timeout=120)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"

    pm("cp", f"{name}:/models/midas_small.int8.onnx", str(tmp_path))
    with running_server(tmp_path / "midas_small.int8.onnx") as host:
        expected = httpx.post(host + "/v1/depth", content=body, headers=JPEG, timeout=120)
    assert expected.status_code == 200
    assert answer.content == expected.content, f"container and host differ; their libraries: {_versions(pm, name)}"


def _versions(pm: Podman, name: str) -> str:
    script = ("import importlib.metadata as m; print({d: m.version(d) for d in "
              "('onnxruntime', 'opencv-python-headless', 'numpy', 'zlib-ng')})")
    host = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout.strip()
    return f"container {pm.out('exec', name, 'python3', '-c', script)}, host {host}"


def test_sigterm_drains_requests_in_flight_and_exits_0(pm, image, keys, photo_set):
    """`podman stop` (SIGTERM to the server, PID 1) while six large photos are in flight on one
    inference worker: all six are answered, the drain is logged, the exit status is 0."""
    big = jpeg(np.tile(photo_set["astronaut"], (4, 4, 1)))  # 2048x2048
    auth = {"authorization": f"Bearer {KEY}"}
    with container(pm, "drain", *with_keys(keys), "--env", "MIDAS_ONNX_WORKERS=1") as (name, base):
        wait_ready(pm, name, base)
        with ThreadPoolExecutor(6) as pool:
            requests = [pool.submit(httpx.post, base + "/v1/depth", content=big, headers={**JPEG, **auth}, timeout=300)
                        for _ in range(6)]
            wait_until(lambda: sample(httpx.get(base + "/metrics", headers=auth).text)[("midas_requests_in_flight",)]
                       >= 7, "six requests in flight", timeout=120)  # six, and this scrape
            pm("stop", "--time", "120", name, timeout=300)
            answers = [f.result() for f in requests]
        state = pm.out("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", name)
        logs = pm("logs", name)
        log = logs.stdout + logs.stderr
    assert [a.status_code for a in answers] == [200] * 6
    assert state == "0 false", log[-3000:]
    assert "drained" in log and "Traceback" not in log
