"""Where a job reads inputs and writes outputs: a local folder, or any URI pyarrow opens.

Paths travel as strings a user can read: absolute local paths, or URIs with their scheme
kept (``s3://bucket/out/a.jpg.heatmap.png``), so manifests name what a user can open.

Writes are atomic on both kinds, each in its own way. Locally: written beside under a unique
name, then renamed. Object stores: one upload straight to the final key, which is atomic
there (an object appears whole when its upload completes, or not at all), where temp + move
would be a copy and a delete, and temp names could collide between nodes. pyarrow is imported only for
URIs: the base install (onnxruntime, numpy, OpenCV) has no pyarrow, and needs none locally.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import MidasOnnxError
from ..files import temp_path_beside, write_atomic


class StoreError(MidasOnnxError, OSError):
    """A location that cannot be opened, listed, read or written; the message names it."""


def is_uri(spec: str) -> bool:
    return "://" in str(spec)


class Store:
    """A folder (``root``) that outputs are written under, local or remote."""

    def __init__(self, spec: str | Path) -> None:
        spec = str(spec)
        self.uri = is_uri(spec)
        if self.uri:
            self.fs, fs_root = _arrow_fs(spec)
            self.scheme = spec.split("://", 1)[0] + "://"
            self.root = (self.scheme + fs_root).rstrip("/")
            self.local = type(self.fs).__name__ == "LocalFileSystem"
        else:
            self.fs, self.scheme, self.local = None, "", True
            self.root = str(Path(spec).resolve())  # resolved here, on the driver, not in each worker
        self.spec = spec if self.uri else self.root  # what a worker elsewhere opens the same folder with

    def join(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def fs_path(self, path: str) -> str:
        return path[len(self.scheme):] if self.scheme and path.startswith(self.scheme) else path

    def write(self, path: str, data: bytes) -> None:
        """Atomic write (see the module's docstring)."""
        try:
            if self.fs is None or self.local:
                write_atomic(self.fs_path(path), data)
                return
            with self.fs.open_output_stream(self.fs_path(path)) as fh:  # object stores need no folders
                fh.write(data)
        except OSError as exc:
            raise StoreError(f"{path}: cannot be written ({_reason(exc)})") from None

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            if self.fs is None:
                return Path(path).read_bytes() if os.path.isfile(path) else None
            fs_path = self.fs_path(path)
            if self.fs.get_file_info(fs_path).type.name != "File":
                return None
            with self.fs.open_input_stream(fs_path) as fh:
                return fh.read()
        except OSError as exc:
            raise StoreError(f"{path}: cannot be read ({_reason(exc)})") from None

    def walk(self) -> Iterator[tuple[str, int]]:
        """Every file under the root as (name below the root, size), folders with size -1,
        streamed: a folder at a time (one request per folder on object stores), so memory
        holds one folder's listing however many files the tree has."""
        try:
            if self.fs is None:
                yield from _local_walk(self.root)
                return
            yield from _arrow_walk(self.fs, self.fs_path(self.root))
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot be listed ({_reason(exc)})") from None

    @contextlib.contextmanager
    def writer(self, path: str) -> Iterator[BinaryIO]:
        """A file written piece by piece, published whole or not at all (see the module's
        docstring): locally under a temporary name, renamed when the block ends without
        an error; on object stores one upload, completed when the block ends."""
        try:
            if self.fs is None or self.local:
                target = Path(self.fs_path(path))
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = temp_path_beside(target)
                try:
                    with open(tmp, "xb") as fh:
                        yield fh
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                return
            with self.fs.open_output_stream(self.fs_path(path)) as fh:
                yield fh
        except OSError as exc:
            raise StoreError(f"{path}: cannot be written ({_reason(exc)})") from None

    def lines(self, path: str) -> Iterator[bytes]:
        """The lines of a file, streamed (nothing when it does not exist)."""
        try:
            if self.fs is None or self.local:
                local = self.fs_path(path)
                if not os.path.isfile(local):
                    return
                with open(local, "rb") as fh:
                    yield from fh
                return
            fs_path = self.fs_path(path)
            if self.fs.get_file_info(fs_path).type.name != "File":
                return
            with self.fs.open_input_stream(fs_path) as fh:
                rest = b""
                while chunk := fh.read(1 << 20):
                    *whole, rest = (rest + chunk).split(b"\n")
                    yield from whole
                if rest:
                    yield rest
        except OSError as exc:
            raise StoreError(f"{path}: cannot be read ({_reason(exc)})") from None


def read_input(path: str) -> bytes:
    """An input's bytes, from a local path or a URI."""
    try:
        if not is_uri(path):
            return Path(path).read_bytes()
        fs, fs_path = _arrow_fs(path)
        with fs.open_input_stream(fs_path) as fh:
            return fh.read()
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read ({_reason(exc)})") from None


def _local_walk(root: str) -> Iterator[tuple[str, int]]:
    start = len(root.rstrip("/")) + 1
    for folder, dirs, files in os.walk(root):
        below = folder[start:] + "/" if folder != root else ""
        for name in dirs:
            yield below + name, -1
        for name in files:
            try:
                yield below + name, os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # removed while listing


def _arrow_walk(fs, root: str) -> Iterator[tuple[str, int]]:
    """Object stores listed a folder (a common prefix) at a time, depth first."""
    from pyarrow import fs as pafs

    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return
    start = len(root.rstrip("/")) + 1
    folders = [root]
    while folders:
        infos = fs.get_file_info(pafs.FileSelector(folders.pop(), recursive=False))
        for info in infos:
            if info.type == pafs.FileType.Directory:
                folders.append(info.path)
                yield info.path[start:], -1
            elif info.type == pafs.FileType.File:
                yield info.path[start:], info.size
        del infos


def _arrow_fs(uri: str):
    try:
        from pyarrow import fs as pafs
    except ImportError:
        raise StoreError(f"{uri}: URIs need pyarrow (pip install 'midas-onnx[ray]')") from None
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{uri}: cannot be opened ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    if getattr(exc, "strerror", None):
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
