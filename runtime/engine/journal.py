"""A job's record: ``job.json`` (the settings), the journal (one row per input, the truth a
rerun resumes from) and ``manifest.jsonl`` (the journal's rows for people and tools).

Why SQLite (WAL mode): appending a row is one small transaction, the same at row 1 and row
1,000,000, and a committed row survives ``kill -9`` (it is in the WAL file before the commit
returns; the OS writes it out). A row is committed before anything reports it finished, so
a rerun redoes at most the inputs that were in flight. Commits never wait for the disk:
checkpoints (the WAL copied into the database, with its fsyncs) run on a thread of their
own every few seconds, so a slow disk never stalls the job's loop while workers go on
writing outputs; a power cut may lose the last seconds of rows, never the file. The manifest is exported from the
journal once, when a job ends or is interrupted, streamed in input order, written whole or
not at all; a failed export loses nothing (the rows stay in the journal, and the next run
exports them). A job that appended nothing does not export again.

Where the journal lives: in OUTPUT (``.journal.sqlite``) for local folders. Object stores
cannot hold a database, so there it is a local state file (named in the summary) and the
manifest in OUTPUT is the record shared between machines: a state file whose rows were all
exported is rebuilt from that manifest at the next start; one with rows not yet exported
(a killed driver, a failed upload) is the newer truth and is kept.

Each row carries the digest of the settings it was made with (``job``): a rerun skips an
input only if its row is ``done`` under the current settings and its outputs exist, so a
``--force`` rerun with new settings that is killed half-way never passes old outputs off
as new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import MidasOnnxError
from .store import Store, StoreError

JOB_FILE = "job.json"
MANIFEST = "manifest.jsonl"
JOURNAL_DB = ".journal.sqlite"
OLD_JOURNAL = ".manifest.journal"  # what earlier versions left beside the manifest when killed
STATE_ENV = "MIDAS_ONNX_STATE_DIR"
CHECKPOINT_S = 2.0


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


def job_changes(old: dict, new: dict) -> list[str]:
    """What differs between two job records (``outputs.colormap inferno -> turbo``; another
    model is named by its id: ``model da-v2-small -> midas-small``). The release and the
    legend (which follows from the description and colormap) are not settings."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in ("midas_onnx", "legend") or a == b:
            continue
        changed += _model_changes(a, b) if key == "description" else _changes(a, b, key)
    return changed


def _changes(a, b, path: str) -> list[str]:
    """``path a -> b`` for each differing leaf of two values (nested dicts walked)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [f"{path} {_short(a)} -> {_short(b)}"]
    return [line for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)
            for line in _changes(a.get(key), b.get(key), f"{path}.{key}" if path else key)]


def _model_changes(old, new) -> list[str]:
    """Two recorded model descriptions: another model by its id, or what differs in one model's."""
    def name(description) -> str:
        return str(description.get("id", "?")) if isinstance(description, dict) else "(none recorded)"

    if not (isinstance(old, dict) and isinstance(new, dict)) or name(old) != name(new):
        return [f"model {name(old)} -> {name(new)}"]
    return [f"model {name(new)}: {line}" for line in _changes(old, new, "")]


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 200 else text[:197] + "..."


def state_folder(store: Store) -> Path:
    """Where OUTPUT's journal and lock live: OUTPUT itself when local, else a folder of
    this machine's state (``$MIDAS_ONNX_STATE_DIR``, default ``~/.cache/midas-onnx``)."""
    if store.local:
        return Path(store.fs_path(store.root))
    base = os.environ.get(STATE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "midas-onnx")
    folder = Path(base) / "jobs" / hashlib.sha256(store.root.encode()).hexdigest()[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"{folder}: cannot keep the job's state here ({exc.strerror or exc}); set {STATE_ENV} "
                       "to a writable folder") from None
    return folder


class Journal:
    """The rows of one OUTPUT in SQLite; ``append`` commits, ``export`` writes the manifest."""

    def __init__(self, store: Store, folder: Path) -> None:
        self.store = store
        self.manifest = store.join(MANIFEST)
        self.path = folder / (JOURNAL_DB if store.local else "journal.sqlite")
        try:
            if not store.local and self.path.exists() and _all_exported(self.path):
                for suffix in ("", "-wal", "-shm"):  # the shared manifest is the truth: rebuilt from it
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            fresh = not self.path.exists()
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise JobError(f"{self.path}: the job's journal cannot be opened ({exc}); remove it to start the "
                           "record afresh from manifest.jsonl") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot be written ({exc.strerror or exc})") from None
        self.appended = 0
        if fresh:
            self._import()
        self._closing = threading.Event()
        self._checkpoints = threading.Thread(target=self._checkpoint, name="journal-checkpoint", daemon=True)
        self._checkpoints.start()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database every few seconds, off the job's loop."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            while not self._closing.wait(CHECKPOINT_S):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # the journal's own connection checkpoints at close
        finally:
            db.close()

    def _import(self) -> None:
        """Rows of an existing manifest (and of an earlier version's journal), streamed in."""
        old = Path(self.store.fs_path(self.store.join(OLD_JOURNAL))) if self.store.local else None
        sources: list[Iterable[bytes]] = [self.store.lines(self.manifest)]
        if old is not None and old.is_file():
            sources.append(_file_lines(old))
        for lines in sources:
            batch = []
            for row in _parse(lines):
                batch.append(row)
                if len(batch) >= 4096:
                    self._insert(batch)
                    batch = []
            self._insert(batch)
        self._set_exported(True)
        if old is not None:
            old.unlink(missing_ok=True)

    def append(self, rows: list[dict]) -> None:
        """Commit finished rows (one transaction); only then may anything report them."""
        if rows:
            self._insert(rows, exported=False if self.appended == 0 else None)
            self.appended += len(rows)

    def _insert(self, rows: list[dict], exported: bool | None = None) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?)",
                                ((r["input"], r.get("relative", ""), r["status"], r.get("job"),
                                  json.dumps(r, sort_keys=True)) for r in rows))
            if exported is not None:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('exported', ?)", (int(exported),))

    def _set_exported(self, exported: bool) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('exported', ?)", (int(exported),))

    def stale(self, manifest_present: bool) -> bool:
        """True when the manifest misses rows of the journal (or is missing)."""
        return not manifest_present or not _all_exported(self.path, self.db)

    def export(self) -> None:
        """``manifest.jsonl`` from every row, in input order, streamed; replaced whole."""
        with self.store.writer(self.manifest) as fh:
            for (data,) in self.db.execute("SELECT data FROM rows ORDER BY input"):
                fh.write(data.encode() + b"\n")
        self._set_exported(True)

    def close(self) -> None:
        """The last checkpoint (the WAL emptied into the database), then closed; idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._checkpoints.join()
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA wal_autocheckpoint = 0;
PRAGMA busy_timeout = 10000;
CREATE TABLE IF NOT EXISTS rows (input TEXT PRIMARY KEY, relative TEXT NOT NULL, status TEXT NOT NULL,
                                 job TEXT, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


def _all_exported(path: Path, db: sqlite3.Connection | None = None) -> bool:
    own = db is None
    db = db or sqlite3.connect(path)
    try:
        value = db.execute("SELECT value FROM meta WHERE key = 'exported'").fetchone()
    except sqlite3.Error:
        return False
    finally:
        if own:
            db.close()
    return value is not None and value[0] == 1


def _file_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from fh


def _parse(lines: Iterable[bytes]) -> Iterator[dict]:
    """Rows of a manifest or journal; a line cut short by a killed writer is skipped."""
    for line in lines:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict) and isinstance(row.get("input"), str) and isinstance(row.get("status"), str):
            yield row


def read_manifest(output: str) -> list[dict]:
    """Rows of OUTPUT's manifest (for tests and tools)."""
    store = Store(output)
    return list(_parse(store.lines(store.join(MANIFEST))))
