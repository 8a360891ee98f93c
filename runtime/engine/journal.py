"""A job's record in its output folder: ``job.json`` (the settings) and ``manifest.jsonl``
(one row per input), the truth a rerun resumes from.

Why two files for the rows: the manifest is only ever replaced whole (written beside, then
renamed), so a reader always sees one row per input; finished rows are first appended to a
journal beside it (``.manifest.journal``, flushed at once, fsynced at most every second), so
a killed driver loses nothing finished. The journal is folded into the manifest every few
seconds and at the end, and whatever a killed run left in it is folded in at the next open.

Each row carries the digest of the settings it was made with (``job``): a rerun skips an
input only if its row is ``done`` under the current settings and its outputs exist, so a
``--force`` rerun with new settings that is killed half-way never passes old outputs off
as new.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ..errors import MidasOnnxError
from .store import Store, StoreError

JOB_FILE = "job.json"
MANIFEST = "manifest.jsonl"
JOURNAL = ".manifest.journal"
SYNC_EVERY_S = 1.0
COMPACT_EVERY_S = 3.0


class JobError(MidasOnnxError):
    """A job that cannot start or go on; the message says why, in one line."""


def settings_digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def read_job(store: Store) -> dict | None:
    """OUTPUT's ``job.json``, None when there is none; a corrupt one is a clear error."""
    path = store.join(JOB_FILE)
    data = store.read(path)
    if data is None:
        return None
    try:
        record = json.loads(data.decode())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise JobError(f"{path}: not a job file midas-onnx wrote ({exc}); remove it, or write to "
                       "another OUTPUT") from None
    return record


def job_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """What differs between two job records (``outputs.colormap inferno -> turbo``)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "midas_onnx" or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed += job_changes(a, b, f"{prefix}{key}.")
        else:
            changed.append(f"{prefix}{key} {_short(a)} -> {_short(b)}")
    return changed


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 200 else text[:197] + "..."


class Journal:
    """The rows of one OUTPUT, loaded at open and kept up to date as rows finish."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.manifest = store.join(MANIFEST)
        if store.local:
            self.journal_path = Path(store.fs_path(store.join(JOURNAL)))
        else:  # object stores cannot append: the journal lives beside the driver
            key = hashlib.sha256(store.root.encode()).hexdigest()[:16]
            self.journal_path = Path.home() / ".cache" / "midas-onnx" / f"journal-{key}.jsonl"
        self.rows: dict[str, dict] = {}
        for row in _parse(store.read(self.manifest)) + _parse(_read_local(self.journal_path)):
            self.rows[row["input"]] = row
        self._fh = None
        self._synced = self._compacted = time.monotonic()

    def append(self, row: dict) -> None:
        """Record a finished row: appended to the journal at once, in the manifest soon."""
        if self._fh is None:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115 - held for the job
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")
        self._fh.flush()
        self.rows[row["input"]] = row
        now = time.monotonic()
        if now - self._synced >= SYNC_EVERY_S:
            os.fsync(self._fh.fileno())
            self._synced = now
        if now - self._compacted >= COMPACT_EVERY_S:
            self.compact()

    def compact(self) -> None:
        """Replace the manifest with one row per input, then empty the journal."""
        ordered = sorted(self.rows.values(), key=lambda r: (r.get("relative", ""), r["input"]))
        self.store.write(self.manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode())
        if self._fh is not None:
            self._fh.truncate(0)
            self._fh.seek(0)
        else:
            self.journal_path.unlink(missing_ok=True)
        self._compacted = time.monotonic()

    def close(self) -> None:
        """Fold the journal into the manifest and remove it (also after a failed job)."""
        try:
            self.compact()
        finally:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            self.journal_path.unlink(missing_ok=True)


def _read_local(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read ({exc.strerror})") from None


def _parse(data: bytes | None) -> list[dict]:
    """Rows of a manifest or journal; a last line cut short by a killed writer is ignored."""
    rows = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("input"), str):
            rows.append(row)
    return rows


def read_manifest(output: str) -> list[dict]:
    """Rows of OUTPUT's manifest (for tests and tools)."""
    store = Store(output)
    return _parse(store.read(store.join(MANIFEST)))
