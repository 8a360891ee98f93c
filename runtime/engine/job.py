"""A whole job: inputs found, settings checked against OUTPUT, outputs planned, items run
by an executor (local threads, or Ray workers running the same local engine on every node),
rows journaled, a summary.

``heatmap`` and ``bulk`` are this class with a different executor; everything a user sees
of a job (names, skips, refusals, manifest rows, the summary) is decided here once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Sequence

from ..files import sha256_file
from .journal import JOB_FILE, MANIFEST, Journal, JobError, job_changes, read_job, settings_digest
from .plan import Inputs, Item, discover, make_items, plan
from .spec import OutputSpec
from .store import Store

Executor = Callable[[list[Item], Callable[[dict], None]], None]


@dataclass
class Summary:
    """What a job did: counts of items done, skipped and failed (``failures`` holds each
    failed item's error), the frames and videos among them, the wall time, and whether it was
    interrupted (a rerun of the same command resumes it). ``line()`` is the one-line report
    the commands print."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    videos: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        images = self.done - self.videos
        return images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        videos = f" ({self.videos} videos, {self.frames} frames)" if self.videos else ""
        stop = "; interrupted: rerun the same command to resume" if self.interrupted else ""
        return (f"{self.done} done{videos}, {self.skipped} skipped, {self.failed} failed in {self.seconds:.1f} s "
                f"({self.images_per_s:.1f} images/s){stop}")


def job_record(model: str, spec: OutputSpec, inputs_root: str) -> dict:
    """What every output depends on; ``job.json`` holds it and a rerun must match it."""
    try:
        version = metadata.version("midas-onnx")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"model_sha256": sha256_file(model), "outputs": spec.record(), "inputs_root": inputs_root,
            "midas_onnx": version}


class Job:
    """Made by ``prepare`` (nothing written yet), then ``run`` once with an executor."""

    def __init__(self, store: Store, spec: OutputSpec, inputs: Inputs, record: dict, journal: Journal,
                 todo: list[Item], skipped: list[dict]) -> None:
        self.store, self.spec, self.inputs, self.record = store, spec, inputs, record
        self.digest = settings_digest({k: v for k, v in record.items() if k != "midas_onnx"})
        self.journal, self.todo, self.skipped = journal, todo, skipped

    @property
    def manifest(self) -> str:
        return self.store.join(MANIFEST)

    @classmethod
    def prepare(cls, inputs: Sequence[str], output: str, model: str, spec: OutputSpec, *,
                force: bool = False) -> "Job":
        """Find inputs, check OUTPUT's settings, plan. Refusals (``JobError``) happen here,
        before any output is written or any worker starts."""
        store = Store(output)
        found = discover(inputs, output)
        if not found.files:
            raise JobError("no input files" + "".join(f"; {p}" for p in found.problems))
        record = job_record(model, spec, found.root)
        old = read_job(store)
        if old is not None and not force:
            changes = job_changes(old, record)
            if changes:
                raise JobError(f"{store.root} holds outputs made with other settings ({'; '.join(changes)}); "
                               "rerun with --force to redo them all, or write to another OUTPUT")
        journal = Journal(store)
        items = make_items(found, store, spec)
        digest = settings_digest({k: v for k, v in record.items() if k != "midas_onnx"})
        todo, skipped = plan(items, journal.rows, store.sizes(), digest, force=force, owned=old is not None)
        return cls(store, spec, found, record, journal, todo, skipped)

    def run(self, execute: Executor, on_row: Callable[[dict], None] | None = None) -> Summary:
        """Run every planned item; each finished row is journaled, then given to ``on_row``."""
        started = time.perf_counter()
        summary = Summary(skipped=len(self.skipped))
        for row in self.skipped:
            if row.get("note", "").startswith("exists"):
                self.journal.append(row)  # done rows stay as they are: a skip never replaces them

        def finished(row: dict) -> None:
            self.journal.append(row)
            if row["status"] == "done":
                summary.done += 1
                if row.get("note", "").endswith(" frames"):
                    summary.videos += 1
                    summary.frames += int(row["note"].split()[0])
            else:
                summary.failed += 1
                summary.failures.append(row["error"])
            if on_row is not None:
                on_row(row)

        self.store.write(self.store.join(JOB_FILE), (json.dumps(self.record, indent=2) + "\n").encode())
        try:
            if self.todo:
                execute(self.todo, finished)
        except KeyboardInterrupt:  # Ctrl-C: what finished is journaled; a rerun resumes from it
            summary.interrupted = True
        finally:
            self.journal.close()
            summary.seconds = time.perf_counter() - started
        return summary
