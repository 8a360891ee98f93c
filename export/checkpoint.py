"""Finding, safely loading and checking official checkpoints, and building the network a
model description names with them (MiDaS small, Depth Anything V2 Small and its metric
variants: each loads its upstream file strictly, under upstream's own key names)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from runtime.errors import MidasOnnxError
from runtime.files import sha256_file
from runtime.model.model_description import MIDAS_SMALL, ModelDescription, describe

# Where tests and benchmarks look for the real MiDaS small weights (first match wins).
WEIGHTS_ENV = "MIDAS_SMALL_WEIGHTS"
_REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS = _REPO_ROOT.parent / "shared" / "weights" / MIDAS_SMALL.checkpoint.filename


class CheckpointError(MidasOnnxError):
    """A checkpoint is missing, not a PyTorch file, or not the model it is meant for."""


def find_real_weights() -> Path | None:
    """The official MiDaS small checkpoint on local disk, if any: $MIDAS_SMALL_WEIGHTS, then ../shared/weights."""
    env = os.environ.get(WEIGHTS_ENV)
    for candidate in (Path(env) if env else None, SHARED_WEIGHTS):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True``: tensors only, never arbitrary pickles.

    Accepts a bare state dict (the official file) or upstream's ``{"model": ..., "optimizer":
    ...}`` training format, as upstream's ``BaseModel.load`` does.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, BadZipFile, even KeyError on text
        raise CheckpointError(f"{path} is not a loadable PyTorch checkpoint: {_why_unloadable(path, exc)}") from None
    if isinstance(obj, dict) and "model" in obj and "optimizer" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


def _why_unloadable(path: Path, exc: Exception) -> str:
    """torch's own message suggests ``weights_only=False``, the one thing never to do with a
    file of unknown origin; say what is wrong instead, in whole sentences."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    text = str(exc)
    if not head:
        return "the file is empty"
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        return "it is neither a zip archive nor a pickle, so not a file torch.save wrote"
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].strip()
        return ("torch.load(weights_only=True) refused it because it holds objects other than tensors, "
                f"which are never unpickled here ({_first_sentence(detail)})")
    return f"torch.load(weights_only=True) could not read it, the file is damaged ({_first_sentence(text)})"


def _first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of ``text`` (or its first ``limit`` characters, cut at a word)."""
    text = " ".join(text.split())
    end = text.find(". ")
    sentence = text if end < 0 else text[: end + 1]
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence.rstrip(".") or type(text).__name__


def check_keys(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str,
               title: str = MIDAS_SMALL.title) -> None:
    """Refuse a state dict that is not ``title``'s layout, naming what is missing, extra or misshapen."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        def head(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" ... (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({head(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({head(unexpected)})")
        if misshapen:
            parts.append(f"{len(misshapen)} keys of the wrong shape ({head(misshapen)})")
        raise CheckpointError(f"{source} is not a {title} checkpoint: " + "; ".join(parts))


def new_network(description: ModelDescription) -> torch.nn.Module:
    """The untrained network ``description`` names, carrying it as ``.description``."""
    if description.family == "midas":
        from .model import MidasNetSmall

        return MidasNetSmall()
    from .depth_anything import DepthAnythingV2

    return DepthAnythingV2(description)


def build_model(checkpoint: str | Path | None = None,
                model: str | ModelDescription = MIDAS_SMALL) -> tuple[torch.nn.Module, str]:
    """``model``'s network (a description or an ``export --model`` id) in eval mode with the
    checkpoint's weights loaded strictly, and the checkpoint's sha256.

    ``checkpoint=None`` uses the official weights, downloaded once into a cache
    (``export.download``; network on first use).
    """
    description = describe(model) if isinstance(model, str) else model
    if checkpoint is None:
        from .download import official_checkpoint

        path = official_checkpoint(description)
    else:
        path = Path(checkpoint)
    state = load_state_dict(path)
    network = new_network(description)
    check_keys(state, network, str(path), description.title)
    network.load_state_dict(state, strict=True)
    return network.eval(), sha256_file(path)


def build_hub_model() -> tuple[torch.nn.Module, str]:
    """MiDaS small by upstream's own code path: ``torch.hub.load("intel-isl/MiDaS", "MiDaS_small")``.

    Needs the network (GitHub code + weights); useful to cross-check this re-implementation.
    """
    try:
        model = torch.hub.load("intel-isl/MiDaS", "MiDaS_small", trust_repo=True)
    except Exception as exc:
        raise CheckpointError(
            f"torch.hub.load('intel-isl/MiDaS', 'MiDaS_small') failed ({type(exc).__name__}: "
            f"{str(exc)[:300]}). It needs internet access; offline, use --checkpoint PATH."
        ) from None
    model.description = MIDAS_SMALL
    return model.eval(), "torch.hub:intel-isl/MiDaS:MiDaS_small"
