"""The trained-like proxy network (``../shared/fixtures/trained_proxy.py``, NOT MiDaS) as a
dynamic-size fp32 ONNX model, built once per test session.

Tests of video behaviour need it: the untrained recipe network is chaotic under small input
changes (sensor noise moves its output as much as a new scene would), so it cannot show
whether steady colours hold still or a scene cut is found. Import the fixture into a test
module (``from tests.proxy_model import proxy_model  # noqa: F401``).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


@functools.lru_cache(maxsize=None)
def _build(folder: Path) -> Path:
    """Export once per folder (session), whichever module asks first."""
    import torch

    from export.checkpoint import build_model
    from export.onnx_export import export_onnx

    sys.path.insert(0, str(FIXTURES))
    from trained_proxy import proxy_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "proxy.pt"
    torch.save(proxy_state_dict(), checkpoint)
    model, sha = build_model(checkpoint)
    return export_onnx(model, folder / "proxy.onnx", None, sha, force=True)


@pytest.fixture(scope="session")
def proxy_model(tmp_path_factory) -> Path:
    """Dynamic-size fp32 export of the trained-like proxy checkpoint."""
    if not (FIXTURES / "trained_proxy.py").is_file():
        pytest.skip(f"needs the shared trained-like proxy at {FIXTURES}")
    pytest.importorskip("torch")
    return _build(tmp_path_factory.getbasetemp() / "proxy_model")
