"""The container image: the repository's Dockerfile built with podman from a Debian base made
here (tests/container_tools.py), then run.

What this proves and what it does not. Every stage of a user's ``docker build .`` runs here
but the PyTorch ones (``torch``, ``exporter``): the CPU build of the torch release
pyproject.toml pins (2.14.1) cannot be installed inside a build on these machines (no such
wheel is reachable from the build, and the 2.13.0+cpu that is has no matching torchvision),
and the official checkpoints cannot be downloaded. So ``--build-context export=`` gives the
build the fp32 model the test fixtures export on the host, and the checkpoint handling of the
export stage (CHECKPOINT, the download cache) is not run in CI. From there on the build is a
user's: the pinned dependencies (container/constraints.txt), static INT8 (calibrated on the
fixtures' photos through the calibration context, to keep CI short), the torch-free runtime.
The Ray variant (EXTRAS=serve,ray, 1 GB) is not built either; its login-shell PATH comes from
the same runtime stage and is checked in this image. Everything made here is named after this
run and removed at the end; podman missing is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
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
from midas_onnx.cli.export_cmd import default_output
from runtime.model.model_description import DEFAULT_MODEL_ID

from .conftest import REPO
from .container_tools import Podman, base_image, build, podman
from .test_serve import jpeg, running_server, sample

TARGET_BYTES = 500_000_000  # the runtime image, uncompressed
RUN_ID = secrets.token_hex(4)
IMAGE = f"localhost/midas-onnx-test:{RUN_ID}"
KEY = "container-test-" + secrets.token_hex(8)
KEY_PATH = "/run/secrets/midas-onnx-keys"
USER_ID = 10001
JPEG = {"content-type": "image/jpeg"}
#: Bounds far beyond what a loaded 2-core machine needs, for the waits and for the server's own
#: limits in the drain test (request, upload, answer, drain): only what is broken reaches them.
SLOW_S = 600
#: Photos in flight when the server is stopped.
IN_FLIGHT = 10


#: Times measured by the fixtures, printed by the tests (a module fixture has no capsys).
FIGURES: dict[str, str] = {}


def report(capsys, *lines: str) -> None:
    """Figures in the test run's output, shown even when output is captured."""
    with capsys.disabled():
        print("", *lines, sep="\n")


@pytest.fixture(scope="module")
def pm():
    with podman() as p:
        yield p


@pytest.fixture(scope="module")
def image(pm, fixed_model, calib_dir, tmp_path_factory):
    t0 = time.monotonic()
    base = base_image(pm)
    FIGURES["base"] = f"container base image ready in {time.monotonic() - t0:.0f} s"
    exported = tmp_path_factory.mktemp("export-stage")  # as `midas-onnx export` lays out models/
    shutil.copy(fixed_model, exported / default_output(DEFAULT_MODEL_ID).name)
    log = tmp_path_factory.mktemp("build") / "build.log"
    t0 = time.monotonic()
    build(pm, REPO, IMAGE, log, {"BASE": base}, {"export": exported, "calibration": calib_dir})
    FIGURES["build"] = f"container image {IMAGE} built in {time.monotonic() - t0:.0f} s (log: {log})"
    yield IMAGE
    pm("rmi", "--force", IMAGE, check=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """A key file as the docs say to make it: the runner's own, readable by its group too (0640),
    which the container's user joins (``with_keys``)."""
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(KEY + "\n")
    path.chmod(0o640)
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


def wait_ready(pm: Podman, name: str, base: str, timeout_s: float = SLOW_S) -> float:
    """Seconds until /readyz answers 200; the container's log if it exits, its model fails to
    load (for good: no use waiting) or it is never ready."""
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(httpx.TransportError):
            ready = httpx.get(base + "/readyz", timeout=2)
            if ready.status_code == 200:
                return time.monotonic() - t0
            assert "model_failed" not in ready.text, ready.text
        running = pm.out("inspect", "--format", "{{.State.Running}}", name) == "true"
        assert running and time.monotonic() - t0 < timeout_s, pm("logs", name, check=False).stderr[-3000:]
        time.sleep(0.2)


def with_keys(keys: Path, *access: str) -> tuple[str, ...]:
    """The docs' `docker run` options for a key file: mounted read-only, readable by the server
    through ``access`` (default: the file's group added to the image's user)."""
    return ("--volume", f"{keys}:{KEY_PATH}:ro", "--env", f"MIDAS_ONNX_API_KEY_FILE={KEY_PATH}",
            *(access or ("--group-add", str(keys.stat().st_gid))))


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
    oci = "org.opencontainers.image."
    labels = {k.removeprefix(oci): v for k, v in json.loads(pm.out("image", "inspect", "--format", "{{json .Labels}}",
                                                                    image)).items() if k.startswith(oci)}
    license_text = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"]
    report(capsys, FIGURES["base"], FIGURES["build"],
           f"container image size: {int(size) / 1e6:.1f} MB uncompressed (target {TARGET_BYTES / 1e6:.0f} MB)")
    assert int(size) <= TARGET_BYTES
    assert labels["version"] == __version__ and labels["licenses"] == license_text
    assert "source" not in labels  # no SOURCE build argument: no empty claim of a repository
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


def test_login_shells_find_the_venv(pm, image):
    """KubeRay starts Ray in the image with `bash -lc` (a login shell resets PATH from
    /etc/profile): the venv's commands are still found, for the image's user and for root. The
    Ray image (EXTRAS=serve,ray) shares the runtime stage this checks."""
    for user in (f"{USER_ID}", "0"):
        found = pm.out("run", "--rm", "--user", user, "--entrypoint", "bash", image, "-lc",
                       "command -v midas-onnx python3 && midas-onnx --version")
        assert found.split("\n") == ["/opt/venv/bin/midas-onnx", "/opt/venv/bin/python3",
                                     f"midas-onnx, version {__version__}"], (user, found)


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
    assert _uids(pm, name) == [str(USER_ID)] * 4  # the server itself, as the host's kernel sees it

    body = jpeg(photo_set["coffee"])
    refused = httpx.post(base + "/v1/depth", content=body, headers=JPEG, timeout=120)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    answer = httpx.post(base + "/v1/depth", content=body, headers={**JPEG, "authorization": f"Bearer {KEY}"},
                        timeout=120)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"

    served_model = pm.out("exec", name, "printenv", "MIDAS_ONNX_MODEL")  # the image's: /models/midas-small.int8.onnx
    pm("cp", f"{name}:{served_model}", str(tmp_path))
    with running_server(tmp_path / Path(served_model).name) as host:
        expected = httpx.post(host + "/v1/depth", content=body, headers=JPEG, timeout=120)
    assert expected.status_code == 200
    assert answer.content == expected.content, f"container and host differ; their libraries: {_versions(pm, name)}"


def test_serves_as_your_own_uid_with_a_key_file_only_you_can_read(pm, image, photo_set, tmp_path):
    """The docs' other way to mount keys: a file of mode 0600 and `--user "$(id -u):$(id -g)"`.
    A uid the image has no account for (no home, no passwd entry) serves as its own user does."""
    uid = USER_ID + 2345
    path = tmp_path / "keys.txt"
    path.write_text(KEY + "\n")
    os.chown(path, uid, uid)
    path.chmod(0o600)
    with container(pm, "own-uid", *with_keys(path, "--user", f"{uid}:{uid}")) as (name, base):
        wait_ready(pm, name, base)
        answer = httpx.post(base + "/v1/depth", content=jpeg(photo_set["coffee"]),
                            headers={**JPEG, "authorization": f"Bearer {KEY}"}, timeout=SLOW_S)
        uids = _uids(pm, name)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", answer.text
    assert uids == [str(uid)] * 4


def _uids(pm: Podman, name: str) -> list[str]:
    """The container's server process's real, effective, saved and filesystem uids."""
    pid = pm.out("inspect", "--format", "{{.State.Pid}}", name)
    return Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split("\n")[0].split()


def _versions(pm: Podman, name: str) -> str:
    script = ("import importlib.metadata as m; print({d: m.version(d) for d in "
              "('onnxruntime', 'opencv-python-headless', 'numpy', 'zlib-ng')})")
    host = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout.strip()
    return f"container {pm.out('exec', name, 'python3', '-c', script)}, host {host}"


def test_sigterm_drains_requests_in_flight_and_exits_0(pm, image, keys, photo_set):
    """`podman stop` (SIGTERM to the server, PID 1) once ten large photos are accepted by one
    inference worker: all ten are answered 200, at least one of them after the drain began
    (the server's log, in order), the drain is complete and the exit status is 0."""
    big = jpeg(np.tile(photo_set["astronaut"], (4, 4, 1)))  # 2048x2048
    auth = {"authorization": f"Bearer {KEY}"}
    bounds = [f"--env=MIDAS_ONNX_{name}={SLOW_S}" for name in ("DRAIN_TIMEOUT", "TIMEOUT", "BODY_TIMEOUT",
                                                               "SEND_TIMEOUT")]
    with container(pm, "drain", *with_keys(keys), "--env", "MIDAS_ONNX_WORKERS=1", *bounds) as (name, base):
        wait_ready(pm, name, base)
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            requests = [pool.submit(httpx.post, base + "/v1/depth", content=big, headers={**JPEG, **auth},
                                    timeout=2 * SLOW_S) for _ in range(IN_FLIGHT)]
            deadline = time.monotonic() + SLOW_S
            while _accepted(base, auth) < IN_FLIGHT:  # a scrape is a request too: not too often
                assert time.monotonic() < deadline, "the photos were never all accepted"
                time.sleep(0.2)
            pm("stop", "--time", str(SLOW_S + 60), name, timeout=SLOW_S + 120)
            answers = [f.result() for f in requests]
        state = pm.out("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", name)
        logs = pm("logs", name)
    log = logs.stderr.splitlines()  # the server's own lines, in order
    assert [a.status_code for a in answers] == [200] * IN_FLIGHT
    assert state == "0 false", logs.stderr[-3000:]
    draining = next(i for i, line in enumerate(log) if "draining:" in line)
    assert any(" POST /v1/depth 200 " in line for line in log[draining:]), "none was in flight at SIGTERM"
    assert any(line.endswith(" drained") for line in log[draining:]), logs.stderr[-3000:]  # nothing cut short
    assert "Traceback" not in logs.stderr, logs.stderr[-3000:]


def _accepted(base: str, auth: dict) -> float:
    """Depth requests the server has taken in: in flight (but this scrape) or answered."""
    metrics = sample(httpx.get(base + "/metrics", headers=auth, timeout=SLOW_S).text)
    answered = sum(v for k, v in metrics.items() if k[0] == "midas_requests_total" and ("route", "/v1/depth") in k)
    return metrics[("midas_requests_in_flight",)] - 1 + answered


def test_constraints_pin_everything_the_image_installs():
    """container/constraints.txt holds every distribution the Dockerfile's pip installs may
    install (pyproject.toml's, with the image's extras and the build backend, and what they
    require as installed here), each at a version pyproject.toml allows: a dependency added
    without refreshing the file fails here, not as an unpinned image."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tool = runpy.run_path(str(REPO / "container" / "constraints.py"))
    pins = {canonicalize_name(Requirement(line).name): Requirement(line).specifier
            for line in (REPO / "container" / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    missing = sorted(set(tool["closure"]()) - set(pins))
    assert not missing, f"not pinned: {missing}; refresh: python container/constraints.py > container/constraints.txt"
    for req in tool["roots"]():
        (version,) = [spec.version for spec in pins[canonicalize_name(req.name)]]
        assert req.specifier.contains(version, prereleases=True), f"{req}: constraints.txt pins {version}"
