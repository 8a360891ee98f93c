"""Inputs found, outputs named, and what to skip: a job's plan, made before any work.

Naming rule (no two inputs can share an output): an input's path relative to the root of
all inputs is mirrored under OUTPUT with its full file name, extension included, before the
suffix: ``x/a.jpg`` -> ``OUT/x/a.jpg.heatmap.png``, ``y/a.jpg`` -> ``OUT/y/a.jpg.heatmap.png``.
The root is recorded in ``job.json``, so inputs from another root never meet these names.

The plan lives in a scratch SQLite database (a temporary file, gone when the job ends), not
in lists: inputs found and OUTPUT's listing are streamed into it, what to do with each input
is one join against the journal, and the items to run are read back a page at a time. So
planning is linear in the inputs, and a job's memory holds none of their names.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .spec import OutputSpec
from .store import Store

TODO, SKIP, KEPT, KEEP_NEW = 0, 1, 2, 3  # KEEP_NEW: kept, not yet recorded as kept
PAGE = 512  # items read back per query
BATCH = 4096  # listing entries per insert


@dataclass(frozen=True)
class Item:
    """One input and every output it gets (kind -> path)."""

    source: str
    relative: str
    video: bool
    targets: dict[str, str] = field(hash=False)


class Plan:
    """The scratch database of one job: ``found`` (inputs below the root), ``present``
    (OUTPUT's files and sizes), ``plan`` (each input's decision)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None, check_same_thread=False)  # "": a temporary file
        self.db.executescript("""
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -16000;
            PRAGMA temp_store = FILE;
            CREATE TABLE found (relative TEXT PRIMARY KEY, video INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE present (name TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE plan (relative TEXT PRIMARY KEY, video INTEGER NOT NULL,
                               decision INTEGER NOT NULL) WITHOUT ROWID;
        """)
        self.counts = {TODO: 0, SKIP: 0, KEPT: 0, KEEP_NEW: 0}

    def add(self, found: list[tuple[str, bool]]) -> int:
        """Inputs found: (name below the root, is a video); returns how many were new."""
        before = self.db.total_changes
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO found VALUES (?, ?)", found)
        return self.db.total_changes - before

    def list_outputs(self, store: Store) -> None:
        """OUTPUT's files and sizes, from one streamed listing (no existence check per output)."""
        entries = store.walk()
        while batch := [entry for _, entry in zip(range(BATCH), entries, strict=False)]:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO present VALUES (?, ?)", batch)

    def decide(self, journal: Path, input_root: str, spec: OutputSpec, digest: str, *, force: bool,
               owned: bool) -> None:
        """Each input's decision (see ``DECISION``), from its journal row and its outputs."""
        images, videos = list(spec.image_suffixes().values()), list(spec.video_suffixes().values())
        slots = range(max(len(images), len(videos)))
        params = {"force": force, "owned": owned, "digest": digest, "prefix": input_root.rstrip("/") + "/",
                  **{f"i{k}": images[k] if k < len(images) else None for k in slots},
                  **{f"v{k}": videos[k] if k < len(videos) else None for k in slots}}
        suffix = "(CASE WHEN f.video THEN :v{k} ELSE :i{k} END)"
        joins = "".join(f" LEFT JOIN present p{k} ON p{k}.name = f.relative || {suffix.format(k=k)}" for k in slots)
        has = [f"COALESCE(p{k}.size, 0) != 0" for k in slots]
        every = " AND ".join(f"({has[k]} OR {suffix.format(k=k)} IS NULL)" for k in slots)
        some = " OR ".join(has)
        self.db.execute("ATTACH DATABASE ? AS journal", (str(journal),))
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute(DECISION.format(every=every, some=some, joins=joins), params)
        finally:
            self.db.execute("DETACH DATABASE journal")
        for decision, count in self.db.execute("SELECT decision, count(*) FROM plan GROUP BY decision"):
            self.counts[decision] = count

    def items(self, decision: int, input_root: str, store: Store, spec: OutputSpec) -> Iterator[Item]:
        """The inputs with ``decision``, in name order, read back a page at a time."""
        prefix = input_root.rstrip("/") + "/"
        images, videos = spec.image_suffixes(), spec.video_suffixes()
        last = ""
        while page := self.db.execute("SELECT relative, video FROM plan WHERE relative > ? AND decision = ? "
                                      "ORDER BY relative LIMIT ?", (last, decision, PAGE)).fetchall():
            for relative, video in page:
                suffixes = videos if video else images
                yield Item(prefix + relative, relative, bool(video),
                           {kind: store.join(relative + s) for kind, s in suffixes.items()})
            last = page[-1][0]

    def close(self) -> None:
        self.db.close()


# Skipped: a row ``done`` under these settings (digest) whose outputs all exist and are not
# empty. Kept: an input with outputs already there that this job must not overwrite: its row
# says ``kept``, or OUTPUT is not this job's yet (no job.json) and any output exists (the
# user's file). ``--force`` redoes everything; all else is processed, outputs this job wrote
# earlier overwritten.
DECISION = f"""
INSERT INTO plan
SELECT f.relative, f.video, CASE
    WHEN :force THEN {TODO}
    WHEN r.status = 'done' AND r.job = :digest AND {{every}} THEN {SKIP}
    WHEN ({{some}}) AND r.status = 'kept' THEN {KEPT}
    WHEN ({{some}}) AND NOT :owned THEN {KEEP_NEW}
    ELSE {TODO} END
FROM found f LEFT JOIN journal.rows r ON r.input = :prefix || f.relative{{joins}}
"""


def make_row(item: Item, status: str, digest: str, *, error: str = "", seconds: float = 0.0,
             frames: int | None = None, where: dict | None = None) -> dict:
    """One manifest row. ``status``: done, failed or kept (outputs that were there before,
    not overwritten); ``frames``: a video's frame count; ``where``: node, host and pid of
    the process that made it."""
    row = {"input": item.source, "relative": item.relative, "status": status,
           "outputs": list(item.targets.values()) if status == "done" else [], "error": error,
           "job": digest, "seconds": round(seconds, 4), "finished": time.time()}
    if frames is not None:
        row["frames"] = frames
    row.update(where or {})
    return row
