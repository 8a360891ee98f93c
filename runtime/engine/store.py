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

import os
from pathlib import Path

from ..errors import MidasOnnxError
from ..files import write_atomic


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

    def sizes(self) -> dict[str, int]:
        """Every file under the root with its size (folders as -1), from one listing: one
        request for the whole tree, not one existence check per output."""
        try:
            if self.fs is None:
                return _local_sizes(self.root)
            from pyarrow import fs as pafs

            fs_root = self.fs_path(self.root)
            if self.fs.get_file_info(fs_root).type == pafs.FileType.NotFound:
                return {}
            infos = self.fs.get_file_info(pafs.FileSelector(fs_root, recursive=True))
            return {self.scheme + i.path: (i.size if i.type == pafs.FileType.File else -1)
                    for i in infos if i.type in (pafs.FileType.File, pafs.FileType.Directory)}
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot be listed ({_reason(exc)})") from None


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


def _local_sizes(root: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.join(folder, name)] = -1
        for name in files:
            try:
                out[os.path.join(folder, name)] = os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # removed while listing
    return out


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
