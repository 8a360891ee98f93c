"""Inputs found, outputs named, and what to skip: a job's plan, made before any work.

Naming rule (no two inputs can share an output): an input's path relative to the root of
all inputs is mirrored under OUTPUT with its full file name, extension included, before the
suffix: ``x/a.jpg`` -> ``OUT/x/a.jpg.heatmap.png``, ``y/a.jpg`` -> ``OUT/y/a.jpg.heatmap.png``.
The root is recorded in ``job.json``, so inputs from another root never meet these names.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..outputs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, common_root, expand_inputs
from .spec import OutputSpec
from .store import Store, StoreError, _arrow_fs, is_uri


@dataclass(frozen=True)
class Item:
    """One input and every output it gets (kind -> path)."""

    source: str
    relative: str
    video: bool
    targets: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Inputs:
    root: str
    files: list[str]
    problems: list[str]


def discover(specs: Sequence[str], output: str | None = None) -> Inputs:
    """Files, folders (recursively), globs, or URIs pyarrow lists -> sorted unique files,
    with one message for each spec that gave none. Files inside OUTPUT are never inputs."""
    local = [s for s in specs if not is_uri(s)]
    remote = [s for s in specs if is_uri(s)]
    if local and remote:
        raise StoreError("inputs are all local or all URIs; got both")
    if remote:
        return _discover_uris(remote, output)
    exclude = Path(output) if output is not None and not is_uri(output) else None
    found, problems = expand_inputs(local, exclude=exclude)
    root = str(common_root(found)) if found else ""
    return Inputs(root, [str(f) for f in found], problems)


def _discover_uris(specs: Sequence[str], output: str | None) -> Inputs:
    from pyarrow import fs as pafs

    known = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    out_prefix = output.rstrip("/") + "/" if output and is_uri(output) else None
    files, problems = [], []
    for spec in specs:
        fs, path = _arrow_fs(spec)
        scheme = spec.split("://", 1)[0] + "://"
        try:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                found = [scheme + path]
            elif info.type == pafs.FileType.Directory:
                entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                found = sorted(scheme + e.path for e in entries if e.type == pafs.FileType.File
                               and os.path.splitext(e.path)[1].lower() in known)
            else:
                found = []
        except OSError as exc:
            raise StoreError(f"{spec}: cannot be listed ({exc})") from None
        found = [f for f in found if not (out_prefix and f.startswith(out_prefix))]
        if not found:
            problems.append(f"{spec}: no such file, or no images or videos in it")
        files.extend(f for f in found if f not in files)
    root = os.path.commonpath([f.split("://", 1)[1].rsplit("/", 1)[0] for f in files]) if files else ""
    scheme = specs[0].split("://", 1)[0] + "://"
    return Inputs(scheme + root if files else "", files, problems)


def is_video_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def make_items(inputs: Inputs, store: Store, spec: OutputSpec) -> list[Item]:
    root = inputs.root.rstrip("/") + "/"
    items = []
    for src in inputs.files:
        rel = src[len(root):] if src.startswith(root) else os.path.basename(src)
        video = is_video_name(src)
        suffixes = spec.video_suffixes() if video else spec.image_suffixes()
        items.append(Item(src, rel, video, {k: store.join(rel + s) for k, s in suffixes.items()}))
    return items


def plan(items: list[Item], rows: dict[str, dict], sizes: dict[str, int], digest: str, *, force: bool,
         owned: bool) -> tuple[list[Item], list[dict]]:
    """(items to process, rows of items skipped).

    Skipped: an input whose row is ``done`` under these settings (``digest``) and whose
    outputs all exist and are not empty. In a folder this job does not own (no ``job.json``
    yet), an input any of whose outputs already exists is the user's file: kept, unless
    ``force``. Everything else is processed, outputs this job wrote earlier overwritten.
    """
    todo, skipped = [], []
    for item in items:
        present = [sizes.get(t, 0) != 0 for t in item.targets.values()]
        row = rows.get(item.source)
        if force:
            todo.append(item)
        elif row and row.get("status") == "done" and row.get("job") == digest and all(present):
            skipped.append(make_row(item, "skipped", digest, note="done earlier"))
        elif not owned and any(present):
            skipped.append(make_row(item, "skipped", digest, note="exists, not written by this job (--force to overwrite)"))
        else:
            todo.append(item)
    return todo, skipped


def make_row(item: Item, status: str, digest: str, *, error: str = "", note: str = "", seconds: float = 0.0,
             where: dict | None = None) -> dict:
    """One manifest row; ``where``: node, host and pid of the process that made it."""
    row = {"input": item.source, "relative": item.relative, "status": status,
           "outputs": list(item.targets.values()) if status != "failed" else [], "error": error,
           "job": digest, "seconds": round(seconds, 4), "finished": time.time()}
    if note:
        row["note"] = note
    row.update(where or {})
    return row
