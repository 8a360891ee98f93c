"""The official checkpoints, downloaded once into a cache and checked against their pins.

Depth Anything V2 files live on the Hugging Face hub: ``huggingface_hub`` downloads them
into its cache (``$HF_HOME``, once per revision) at the description's pinned revision;
MiDaS small is a GitHub release asset, kept in torch.hub's cache. Either way the file's
sha256 is compared with the description's before anything loads it. Offline, every path
ends in one line naming the file to fetch elsewhere and pass with ``--checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

from runtime.files import sha256_file
from runtime.model.model_description import Checkpoint, ModelDescription

from .checkpoint import CheckpointError


def official_checkpoint(description: ModelDescription) -> Path:
    """The official checkpoint of ``description``, from the cache or downloaded once."""
    source = description.checkpoint
    try:
        path = _from_hub(source) if source.hub_repo else _from_url(source)
    except CheckpointError:
        raise
    except Exception as exc:  # HTTP, timeouts, SSL, offline mode, no such revision: all mean "no file"
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(
            f"could not download the official {description.title} weights from {source.url} "
            f"({type(exc).__name__}: {detail}). Offline? Download {source.filename} elsewhere "
            "and pass it with --checkpoint PATH.") from None
    check_sha256(path, source)
    return path


def _from_hub(source: Checkpoint) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError("downloading from the Hugging Face hub needs huggingface_hub: "
                              "pip install 'midas-onnx[export]'") from None
    return Path(hf_hub_download(repo_id=source.hub_repo, filename=source.filename, revision=source.revision))


def _from_url(source: Checkpoint) -> Path:
    import torch

    target = Path(torch.hub.get_dir()) / "checkpoints" / source.filename
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(source.url, str(target), progress=True)
    return target


def check_sha256(path: Path, source: Checkpoint) -> None:
    """Refuse a file whose sha256 is not the pinned one (nothing to compare when unpinned)."""
    if source.sha256 is None:
        return
    actual = sha256_file(path)
    if actual != source.sha256:
        raise CheckpointError(f"{path} has sha256 {actual}, not the official {source.filename}'s "
                              f"{source.sha256}: delete it and download again, or pass a good copy with --checkpoint")
