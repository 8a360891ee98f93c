"""The built wheel holds every package of the checkout: a non-editable install (the
container's, ``pip install .``) imports what the editable one does."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("midas_onnx", "export", "runtime", "quantize", "benchmarks", "serve", "bulk")


def test_the_wheel_holds_every_package_and_the_server_pages(tmp_path):
    # built from a copy without the checkout's build/ and egg-info, whose stale lists would hide a gap
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "models", "site",
                                                                   "__pycache__", ".venv*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("midas_onnx-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(str(p.relative_to(ROOT)) for top in TOP for p in (ROOT / top).rglob("__init__.py"))
    assert len(packages) > len(TOP)  # sub-packages exist (runtime/engine, midas_onnx/cli)
    missing = [p for p in packages if p not in names]
    assert not missing, f"packages left out of the wheel: {missing}"
    assert "runtime/engine/journal.py" in names and "serve/static/index.html" in names
