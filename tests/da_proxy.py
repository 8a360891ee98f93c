"""A trained-like Depth Anything V2 Small stand-in (NOT Depth Anything), as a dynamic-size
fp32 ONNX model, for INT8 fidelity tests.

INT8 error means nothing on random weights: the seed-0 recipe network (``../shared/fixtures/
da_v2_recipe.py``) is chaotic under INT8, as the random MiDaS recipe was. The stand-in keeps
the recipe's ViT blocks and replaces the final LayerNorm and the DPT head with weights
distilled from the MiDaS trained-like stand-in (``../shared/fixtures/trained_proxy.py``): they
were trained to regress its smooth inverse depth on the built-in calibration photos
(``quantize.builtin_photos``, never the held-out ones) at 126x126. Those 62 tensors are
``tests/fixtures/da_v2_standin_head.npz`` (2.7M values, int8 per output channel with float32
scales, 1-D tensors float16: 2.4 MB), so the fixture loads in seconds instead of training for
minutes, and is the same on every machine and torch version. Its output is a smooth,
image-dependent depth-like map (``tests/test_int8_da.py::test_the_stand_in_is_trained_like``),
so INT8 error on it is meaningful. Never quote its figures as Depth Anything quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
HEAD = Path(__file__).resolve().parent / "fixtures" / "da_v2_standin_head.npz"
SIZE = 126  # the head's training size (a 9x9 patch grid): the tests' input size


def standin_state_dict() -> dict:
    """The recipe's state dict with the distilled head (and final norm) put in."""
    import torch

    sys.path.insert(0, str(FIXTURES))
    from da_v2_recipe import recipe_state_dict

    state = recipe_state_dict()
    stored = np.load(HEAD)
    for key in stored.files:
        name, kind = key.rsplit("|", 1)
        if kind == "scale":
            continue
        if kind == "q":
            q = stored[key].astype(np.float32)
            value = (q.reshape(q.shape[0], -1) * stored[f"{name}|scale"][:, None]).reshape(q.shape)
        else:
            value = stored[key].astype(np.float32)
        if name not in state or tuple(state[name].shape) != value.shape:
            raise ValueError(f"{HEAD.name}: {name} does not fit the recipe network")
        state[name] = torch.from_numpy(value)
    return state


def build(folder: Path) -> Path:
    """Save the checkpoint and export it with the project's own exporter (dynamic size)."""
    import torch

    from export.checkpoint import build_model
    from export.onnx_export import export_onnx
    from runtime.model.model_description import DA_V2_SMALL

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "da_proxy.pt"
    torch.save(standin_state_dict(), checkpoint)
    model, sha = build_model(checkpoint, DA_V2_SMALL)
    return export_onnx(model, folder / "da_proxy.onnx", None, sha, force=True, description=DA_V2_SMALL)


@pytest.fixture(scope="session")
def da_proxy_model(tmp_path_factory) -> Path:
    """Dynamic-size fp32 export of the trained-like Depth Anything V2 Small stand-in."""
    if not (FIXTURES / "da_v2_recipe.py").is_file():
        pytest.skip(f"needs the shared Depth Anything V2 recipe at {FIXTURES}")
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    return build(tmp_path_factory.getbasetemp() / "da_proxy")
