"""Podman for tests/test_container.py: the tools, a storage and network of its own, the base image.

Everything the test makes lives under one cache folder ($XDG_CACHE_HOME or ~/.cache, then
midas-onnx/podman): its own image storage, network and configuration, so it never sees or
touches another podman user's images and containers, and the base image and the dependency
layers survive between runs on the same machine. No image registry is reachable here, so the
base is made from Debian's archive with mmdebstrap, standing in for python:3.11-slim-bookworm
(Debian 12, Python 3.11). Test runs of two checkouts on one machine share that folder: an
exclusive lock (``locked``) is held while either changes it (configuration, storage reset,
network, base image, image build), and a shared one (``in-use``) for as long as a run uses
it, so that the storage is never reset under another run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "midas-onnx" / "podman"
TOOLS = ("podman", "runc", "mmdebstrap")
TEST_MODULE = "tests/test_container.py"
SUITE = "bookworm"  # Debian 12, the Dockerfile's default base (python:3.11-slim-bookworm)
BASE_IMAGE = f"localhost/midas-base:{SUITE}"
NETWORK = "midas-onnx-test"
#: pip inside `podman build` reaches PyPI through a proxy with its own CA: the host's bundle,
#: for the build only (the image keeps Debian's).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Debian 12's Python 3.11 with venv, slimmed as Debian's -slim images are (no docs,
#: manuals or translations), /usr merged without the usrmerge package (and the Perl it pulls).
MMDEBSTRAP = ["--variant=minbase", "--include=python3,python3-venv,ca-certificates",
              "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
              *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale", "groff", "lintian")),
              "--dpkgopt=path-include=/usr/share/doc/*/copyright"]
APT_SOURCES = [p for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
               if p.is_file() and p.stat().st_size]
BASE_MAX_AGE_S = 30 * 86400  # then made again, with the archive's security updates
STORAGE_LIMIT_BYTES = 15e9  # layers of past builds pile up; beyond this the storage starts afresh


class Podman:
    """``podman`` on the test's own storage, configuration and network."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "CONTAINERS_CONF": str(home / "containers.conf")}
        self.base = ["podman", "--root", str(home / "storage"), "--runroot", str(home / "run")]

    def __call__(self, *args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              **kwargs)
        assert done.returncode == 0 or not check, f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}"
        return done

    def out(self, *args: str, **kwargs) -> str:
        return self(*args, **kwargs).stdout.strip()


@contextlib.contextmanager
def locked(name: str = "build", shared: bool = False, blocking: bool = True):
    """``flock`` on CACHE/<name>.lock for the ``with`` block; yields False when not ``blocking``
    and another run holds it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True  # the lock ends with the file's closing


@contextlib.contextmanager
def podman():
    """Yields the test's Podman, for as long as the test runs: the tools (else a failure naming
    the apt command: CI installs them), the configuration, the storage within its size limit
    (reset only when no other run uses it), and the network."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, (f"the container test needs {', '.join(missing)}: apt-get install {' '.join(TOOLS)} "
                         f"(bash .ci/run does), or leave it out here: pytest --ignore={TEST_MODULE}")
    assert os.geteuid() == 0, ("the container test runs podman as root (rootful storage and networks, key "
                               f"files of other uids), as bash .ci/run does; or leave it out here: "
                               f"pytest --ignore={TEST_MODULE}")
    p = Podman(CACHE)
    with locked():
        _write(CACHE / "containers.conf", _containers_conf())
        if _size(CACHE / "storage") > STORAGE_LIMIT_BYTES:
            with locked("in-use", blocking=False) as alone:
                if alone:
                    p("system", "reset", "--force")
                    _write(CACHE / "containers.conf", _containers_conf())
        if p("network", "exists", NETWORK, check=False).returncode:
            p("network", "create", "--interface-name", "midasonnx0", NETWORK)
    with locked("in-use", shared=True):
        yield p


def _write(path: Path, text: str) -> None:
    """Replaced whole, so that another run's podman never reads half a file."""
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


def _containers_conf() -> str:
    """runc, not crun (crun fails here: "cgroups in hybrid mode not supported"), and rlimits
    the runtime may set: podman's defaults exceed what root here may raise to (no
    CAP_SYS_RESOURCE), and podman itself runs with at most 32768 processes."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 1 << 20 if nofile == resource.RLIM_INFINITY else min(nofile, 1 << 20)
    nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    return (f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            f'[engine]\nruntime = "runc"\ntmp_dir = "{CACHE / "tmp"}"\n'
            f'[network]\nnetwork_config_dir = "{CACHE / "networks"}"\ndefault_network = "{NETWORK}"\n')


def _size(folder: Path) -> int:
    if not folder.exists():
        return 0
    return int(subprocess.run(["du", "-sb", str(folder)], capture_output=True, text=True).stdout.split()[0] or 0)


def base_image(p: Podman) -> str:
    """The Debian base in the test's storage, made (about a minute) only when its tarball is
    missing, older than BASE_MAX_AGE_S or made with other arguments or apt sources; checked to
    be SUITE, which the machine's apt sources (the one reachable mirror) must serve."""
    with locked():
        return _base_image(p)


def _base_image(p: Podman) -> str:
    key = hashlib.sha256("\n".join(MMDEBSTRAP + [s.read_text() for s in APT_SOURCES]).encode()).hexdigest()[:12]
    tarball = CACHE / f"base-{SUITE}-{key}.tar"
    if tarball.is_file() and time.time() - tarball.stat().st_mtime > BASE_MAX_AGE_S:
        tarball.unlink()
        p("rmi", "--force", BASE_IMAGE, check=False)
    if not tarball.is_file():
        for old in CACHE.glob(f"base-{SUITE}-*.tar*"):
            old.unlink()
        partial = tarball.with_suffix(".tar.partial")
        mirrors = [str(s) for s in APT_SOURCES] or ["http://deb.debian.org/debian"]
        made = subprocess.run(["mmdebstrap", *MMDEBSTRAP, "--format=tar", SUITE, str(partial), *mirrors],
                              capture_output=True, text=True, timeout=1800)
        assert made.returncode == 0, f"mmdebstrap failed:\n{made.stderr[-3000:]}"
        partial.replace(tarball)
        p("rmi", "--force", BASE_IMAGE, check=False)
    if p("image", "exists", BASE_IMAGE, check=False).returncode:
        p("import", str(tarball), BASE_IMAGE)
        suite = p.out("run", "--rm", "--network", "none", BASE_IMAGE, "sh", "-c",
                      '. /etc/os-release && echo "$VERSION_CODENAME"')
        if suite != SUITE:
            p("rmi", "--force", BASE_IMAGE, check=False)
            raise AssertionError(f"the base image is Debian {suite}, not {SUITE}: the apt sources "
                                 f"{[str(s) for s in APT_SOURCES]} name another suite")
    return BASE_IMAGE


def build(p: Podman, context: Path, tag: str, log: Path, build_args: dict[str, str],
          build_contexts: dict[str, Path]) -> None:
    """``podman build`` of ``context`` (Docker format: OCI drops HEALTHCHECK), with the host's CA
    bundle for pip and nothing pulled; the log, each line with its second of the build, in ``log``.
    One build at a time in the shared storage."""
    args = ["build", "--format", "docker", "--pull=never", "--network", "host", "--tag", tag]
    if CA_BUNDLE.is_file():
        args += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    for name, value in build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    for name, folder in build_contexts.items():
        args += ["--build-context", f"{name}={folder}"]
    t0 = time.monotonic()
    with locked(), open(log, "w") as sink, subprocess.Popen([*p.base, *args, str(context)], env=p.env, text=True,
                                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for line in proc.stdout:
            sink.write(f"{time.monotonic() - t0:7.1f} {line}")
    assert proc.returncode == 0, f"podman build failed:\n{log.read_text()[-5000:]}"
