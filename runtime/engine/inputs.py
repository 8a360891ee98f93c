"""Inputs found: files, folders (recursively), globs or URIs, streamed as names below one
root, never gathered in a list: a job of a million inputs holds none of their names.

The root is decided by the command line, not by the files found: a folder given is the
root of everything found in it, a file's root is its folder, a glob's the folder before
its first wildcard, and the job's root is the common folder of those. So the same command
names the same outputs whatever files come and go: ``heatmap photos/`` records
``photos`` even when every photo so far is in ``photos/2023/``, and ``photos/2024/x.jpg``
added later is simply a new input.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..outputs.render import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .store import StoreError, _arrow_fs, _reason, is_uri

KNOWN = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
BATCH = 4096  # names handed to the sink at a time
_KNOWN = {e[1:] for e in KNOWN}
_VIDEO = {e[1:] for e in VIDEO_EXTENSIONS}

Found = list[tuple[str, bool]]  # (name below the root, is a video)


@dataclass
class Inputs:
    """What discovery found: the root every output name is made below, how many inputs
    (unique), and one message for each spec that gave none."""

    root: str
    count: int = 0
    problems: list[str] = field(default_factory=list)


def is_video_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def discover(specs: Sequence[str], output: str | None, sink: Callable[[Found], int]) -> Inputs:
    """Stream every input's name below the root to ``sink`` (batches; it returns how many
    were new, so inputs named twice count once). Files inside OUTPUT are never inputs."""
    uris = [is_uri(s) for s in specs]
    if any(uris) and not all(uris):
        raise StoreError("inputs are all local or all URIs; got both")
    remote = bool(specs) and all(uris)
    exclude = _exclusion(output, remote)
    sources = [_uri_source(s) if remote else _local_source(s) for s in specs]
    inputs = Inputs(_common_root([s.base for s in sources if s.base is not None], remote))
    prefix = inputs.root.rstrip("/") + "/"
    for source in sources:
        found = 0
        batches = (_walk(source.folder, prefix, exclude) if source.folder is not None
                   else _named(source, prefix, exclude, inputs.problems))
        for batch in batches:
            found += len(batch)
            inputs.count += sink(batch)
        if not found:
            inputs.problems.append(source.why_none if source.base is None or not source.inside(exclude)
                                   else f"{source.spec}: only files inside the output folder {output}")
    return inputs


def _named(source: "_Source", prefix: str, exclude: str | None, problems: list[str]) -> Iterator[Found]:
    """Files a source names one by one (files, globs, URIs), below the root, OUTPUT left out."""
    batch: Found = []
    for path in source.files():
        if exclude is not None and path.startswith(exclude):
            continue
        if not path.startswith(prefix):  # a pattern whose ".." leaves its own folder
            problems.append(f"{source.spec}: {path} lies outside the pattern's folder; name it on its own")
            continue
        batch.append((path[len(prefix):], is_video_name(path)))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _walk(base: str, prefix: str, exclude: str | None) -> Iterator[Found]:
    """Images and videos below a folder (by extension), OUTPUT's folder pruned (never
    walked), a folder's names at a time: the one loop a million-file tree goes through."""
    start, batch = len(prefix), []
    for folder, dirs, files in os.walk(base):
        if exclude is not None:
            dirs[:] = [d for d in dirs if os.path.join(folder, d) + "/" != exclude]
        dirs.sort()
        below = (folder + "/")[start:]
        for name in sorted(files):
            dot = name.rfind(".")
            ext = name[dot + 1:].lower() if dot > 0 else ""
            if ext in _KNOWN:
                batch.append((below + name, ext in _VIDEO))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class _Source:
    spec: str
    base: str | None  # None: nothing there
    files: Callable[[], Iterator[str]]
    why_none: str
    folder: str | None = None  # a local folder: walked by ``_walk``, not named file by file

    def inside(self, exclude: str | None) -> bool:
        return exclude is not None and self.base is not None and (self.base + "/").startswith(exclude)


def _local_source(spec: str) -> _Source:
    path = Path(spec)
    if path.is_dir():
        base = str(path.resolve())
        return _Source(spec, base, lambda: iter(()), f"{spec}: folder has no images or videos "
                       f"({', '.join(sorted(KNOWN))})", folder=base)
    if path.exists():
        parent = str(path.parent.resolve())
        return _Source(spec, parent, lambda: iter([os.path.join(parent, path.name)]), "")
    if glob.has_magic(spec):
        literal = _literal_folder(spec)
        base = str(Path(literal).resolve()) if os.path.isdir(literal) else None
        return _Source(spec, base, lambda: _glob(spec, literal, base), f"{spec}: no files match this pattern")
    return _Source(spec, None, lambda: iter(()), f"{spec}: no such file or folder")


def _literal_folder(pattern: str) -> str:
    """The folder before a pattern's first wildcard: ``photos/*/a.jpg`` -> ``photos``."""
    parts = Path(pattern).parts
    head = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return str(Path(*parts[:head])) if head else "."


def _glob(pattern: str, literal: str, base: str | None) -> Iterator[str]:
    """Matching files (any extension, as the user named them), below the resolved base."""
    if base is None:
        return
    start = len(os.path.normpath(literal)) if literal != "." else 0
    for match in glob.iglob(pattern, recursive=True):
        if os.path.isfile(match):
            rest = os.path.normpath(match)[start:].lstrip("/")
            yield os.path.normpath(os.path.join(base, rest))


def _uri_source(spec: str) -> _Source:
    fs, path = _arrow_fs(spec)  # first: without pyarrow, the one-line error says so
    from pyarrow import fs as pafs

    scheme = spec.split("://", 1)[0] + "://"
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise StoreError(f"{spec}: cannot be listed ({_reason(exc)})") from None
    why = f"{spec}: no such file, or no images or videos in it"
    if info.type == pafs.FileType.File:
        return _Source(spec, scheme + path.rsplit("/", 1)[0], lambda: iter([scheme + path]), why)
    if info.type == pafs.FileType.Directory:
        root = path.rstrip("/")

        def files() -> Iterator[str]:
            from .store import _arrow_walk

            try:
                for name, size in _arrow_walk(fs, root):
                    if size >= 0 and os.path.splitext(name)[1].lower() in KNOWN:
                        yield f"{scheme}{root}/{name}"
            except OSError as exc:
                raise StoreError(f"{spec}: cannot be listed ({_reason(exc)})") from None

        return _Source(spec, scheme + root, files, why)
    return _Source(spec, None, lambda: iter(()), why)


def _common_root(bases: list[str], uri: bool) -> str:
    if not bases:
        return ""
    if not uri:
        return os.path.commonpath(bases)
    scheme = bases[0].split("://", 1)[0] + "://"
    return scheme + os.path.commonpath([b.split("://", 1)[1] for b in bases])


def _exclusion(output: str | None, uri: bool) -> str | None:
    """OUTPUT as a prefix that inputs must not start with (same kind of path only)."""
    if output is None or is_uri(output) != uri:
        return None
    if uri:
        return output.rstrip("/") + "/"
    return str(Path(output).resolve()) + "/"
