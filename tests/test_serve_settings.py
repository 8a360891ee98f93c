"""Service settings (serve.settings): every field reachable from its flag and from its
``MIDAS_ONNX_*`` variable, every number finite and in range, each bad value one line."""

from __future__ import annotations

import os
import subprocess
import sys
import typing

import httpx
import pytest

from midas_onnx.cli.serve_cmd import _base, command
from serve.settings import ServeSettings, SettingsError

from .conftest import REPO
from .test_serve import free_port
from .test_serve_hardening import wait_until

#: Settings that have no flag, and why.
ENV_ONLY = {"api_keys": "a command line is visible to every user of the machine",
            "key_id_secret": "a secret, as the keys",
            "job_store": "chosen by --ray"}
#: Names the service has read before (and a container image relies on): they must keep working.
KNOWN_NAMES = ["MODEL", "THREADS", "WORKERS", "COLORMAP", "MAX_BODY_MB", "MAX_PIXELS", "MAX_BATCH", "MAX_WAIT_MS",
               "QUEUE_SIZE", "TIMEOUT", "JOB_TTL", "MAX_JOB_MB", "MAX_WORK_MB", "MAX_UPLOADS", "BODY_TIMEOUT",
               "MAX_KNOWN_POINTS", "DRAIN_TIMEOUT", "JOB_LEASE", "QUIET", "API_KEYS", "API_KEY_FILE",
               "INSECURE_NO_AUTH", "PUBLIC_METRICS", "ALLOWED_HOSTS", "CORS_ORIGINS", "KEY_RATE",
               "KEY_CONCURRENCY", "REFUSAL_RATE", "REFUSAL_BURST", "MAX_STREAMS", "HOST", "PORT",
               "PUBLIC_READYZ", "MAX_JOBS", "KEY_BURST"]
NUMBERS = [name for name, f in ServeSettings.model_fields.items() if _base(f.annotation) in (int, float)]


@pytest.fixture()
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("MIDAS_ONNX_"):
            monkeypatch.delenv(name)
    return monkeypatch


def other_value(name: str) -> tuple[str, object]:
    """(text as a flag or variable gives it, the value it must become): not the default."""
    field = ServeSettings.model_fields[name]
    kind = _base(field.annotation)
    default = None if field.is_required() or field.default_factory else field.default
    special = {"host": ("10.1.2.3", "10.1.2.3"), "port": ("9001", 9001), "autoscale": ("1:3", "1:3"),
               "address": ("ray://head:10001", "ray://head:10001"), "model": ("/m/x.onnx", ("/m/x.onnx",)),
               "max_work_mb": ("4096", 4096.0)}
    if name in special:
        return special[name]
    if kind is bool:
        return str(not default).lower(), not default
    if kind is int:
        return str((default or 0) + 1), (default or 0) + 1
    if kind is float:
        value = default / 2 if default else 1.5
        return repr(value), value
    if typing.get_origin(kind) is tuple:
        return "a.example,b.example", ("a.example", "b.example")
    if typing.get_origin(kind) is typing.Literal:
        choice = next(c for c in typing.get_args(kind) if c != default)
        return choice, choice
    return "viridis", "viridis"


def normalise(value):
    from pydantic import SecretStr

    return str(value) if isinstance(value, os.PathLike) else value.get_secret_value() \
        if isinstance(value, SecretStr) else value


@pytest.mark.parametrize("name", list(ServeSettings.model_fields))
def test_every_field_comes_from_its_variable_and_its_flag(name, clean_env):
    text, want = other_value(name)
    base = {"model": "m.onnx", "ray": True} if name in ("address", "autoscale") else {"model": "m.onnx"}
    clean_env.setenv(ServeSettings.env_name(name), text)
    from_env = ServeSettings.load(**{k: v for k, v in base.items() if k != name})
    assert normalise(getattr(from_env, name)) == want, f"{ServeSettings.env_name(name)}={text}"
    clean_env.delenv(ServeSettings.env_name(name))
    flag = ServeSettings.flag_name(name)
    if name in ENV_ONLY:
        assert flag is None
        return
    args = [flag] if _base(ServeSettings.model_fields[name].annotation) is bool and want else \
        [f"--no-{flag[2:]}"] if _base(ServeSettings.model_fields[name].annotation) is bool else \
        [a for item in (text.split(",") if "," in text else [text]) for a in (flag, item)]
    if name in ("address", "autoscale"):
        args += ["--ray"]
    params = command.make_context("serve", args).params
    given = {k: v for k, v in params.items() if v is not None and v != ()}
    from_flag = ServeSettings.load(**({"model": "m.onnx"} | given))
    assert normalise(getattr(from_flag, name)) == want, " ".join(args)


def test_the_names_deployments_use_are_fields():
    names = {ServeSettings.env_name(f) for f in ServeSettings.model_fields}
    assert {"MIDAS_ONNX_" + n for n in KNOWN_NAMES} <= names


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "1e999"])
def test_numbers_that_are_not_finite_or_in_range_are_refused(name, text, clean_env):
    clean_env.setenv(ServeSettings.env_name(name), text)
    with pytest.raises(SettingsError) as caught:
        ServeSettings.load(model="m.onnx")
    line = str(caught.value)
    assert line.startswith(f"{ServeSettings.env_name(name)}={text!r}: ") and "\n" not in line, line


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("MIDAS_ONNX_")}
    return subprocess.run([sys.executable, "-m", "midas_onnx", "serve", "--model", "x.onnx", *args], cwd=REPO,
                          env=clean | (env or {}), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, env, line", [
    (["--max-body-mb", "nan"], None, "error: --max-body-mb nan: input should be a finite number"),
    (["--timeout", "-5"], None, "error: --timeout -5.0: input should be greater than 0"),
    ([], {"MIDAS_ONNX_KEY_RATE": "inf"}, "error: MIDAS_ONNX_KEY_RATE='inf': input should be a finite number"),
    ([], {"MIDAS_ONNX_MAX_PIXELS": "20M"}, "error: MIDAS_ONNX_MAX_PIXELS='20M': input should be a valid integer"),
    ([], {"MIDAS_ONNX_PORT": "-1"}, "error: MIDAS_ONNX_PORT='-1': input should be greater than or equal to 0"),
])
def test_the_cli_refuses_a_bad_value_in_one_line(args, env, line):
    out = cli(*args, env=env)
    assert out.returncode == 1 and out.stderr.startswith(line), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_the_factory_refuses_a_bad_value_in_one_line(fixed_model):
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MIDAS_ONNX_")}
    env |= {"MIDAS_ONNX_MODEL": str(fixed_model), "MIDAS_ONNX_MAX_WORK_MB": "nan"}
    out = subprocess.run([sys.executable, "-m", "uvicorn", "--factory", "serve.app:app_from_env", "--port",
                          str(free_port())], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert "error: MIDAS_ONNX_MAX_WORK_MB='nan': input should be a finite number" in out.stderr


def test_the_bind_address_adds_to_the_allowed_hosts_from_the_environment(fixed_model):
    """The CLI passed --host as the whole allow-list when it was not loopback, dropping
    MIDAS_ONNX_ALLOWED_HOSTS: a load balancer's name got 400."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            outward = s.getsockname()[0]
        except OSError:
            outward = "127.0.0.1"
    if outward.startswith("127."):
        pytest.skip("no non-loopback address on this machine")
    key = "settings-test-key-Vb8Kq2Zt5Wn9Xc3Lm7Pd"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MIDAS_ONNX_")}
    env |= {"MIDAS_ONNX_ALLOWED_HOSTS": "depth.example", "MIDAS_ONNX_API_KEYS": key}
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "serve", "--model", str(fixed_model), "--host",
                             outward, "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url, auth = f"http://{outward}:{port}", {"authorization": f"Bearer {key}"}

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, "server up")
        named = httpx.get(url + "/v1/jobs/none", headers={"host": "depth.example"} | auth)
        own = httpx.get(url + "/v1/jobs/none", headers=auth)
        other = httpx.get(url + "/v1/jobs/none", headers={"host": "evil.example"} | auth)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert named.status_code == 404 and own.status_code == 404, (named.text, own.text)
    assert other.status_code == 400


def test_every_option_is_in_the_docs():
    page = (REPO / "docs" / "commands" / "serve.md").read_text()
    missing = [ServeSettings.flag_name(n) or ServeSettings.env_name(n) for n in ServeSettings.model_fields
               if f"`{ServeSettings.flag_name(n) or ServeSettings.env_name(n)}" not in page]
    assert missing == [], missing


def test_engine_and_input_size_left_at_their_defaults_leave_the_environment_in_force(clean_env):
    """--engine has a default of its own (common.run_options): taken as given, it would hide
    MIDAS_ONNX_ENGINE."""
    from midas_onnx.cli.serve_cmd import given_flags

    clean_env.setenv("MIDAS_ONNX_ENGINE", "openvino")
    clean_env.setenv("MIDAS_ONNX_INPUT_SIZE", "364")
    for args, engine, size in ((["--model", "m.onnx"], "openvino", 364),
                               (["--model", "m.onnx", "--engine", "onnxruntime", "--input-size", "252"],
                                "onnxruntime", 252)):
        context = command.make_context("serve", args)
        settings = ServeSettings.load(**given_flags(context, context.params))
        assert (settings.engine, settings.input_size) == (engine, size), args
