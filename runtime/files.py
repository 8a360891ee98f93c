"""File helpers shared by the CLI, exporter and quantizer: hashing and safe writes."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


TEMP_NAME = re.compile(r"(^|/)\.[^/]+\.[0-9a-f]{12}\.tmp$")  # what ``temp_path_beside`` names


def temp_path_beside(path: Path) -> Path:
    """A unique, not yet existing name in ``path``'s folder (same filesystem: rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write beside ``path`` then rename: readers never see half a file, crashes leave none.

    Created with mode 0666 less the umask, like any file (``mkstemp``'s 0600 would make
    models unreadable to a service running as another user).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
