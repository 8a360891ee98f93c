"""A whole job: inputs found, settings checked against OUTPUT, OUTPUT locked, outputs planned,
items run by an executor (local threads, or Ray workers running the same local engine on
every node), rows journaled, the manifest exported, a summary.

``heatmap`` and ``bulk`` are this class with a different executor; everything a user sees
of a job (names, skips, refusals, manifest rows, the summary) is decided here once.

An executor is ``execute(items, on_rows, stop)``: it runs the items (an iterable read a page
at a time), gives finished rows to ``on_rows`` in batches as they land, and once ``stop`` is
set starts nothing new, lets what runs finish (a video stops at its next frame and gives no
row), and returns.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import MidasOnnxError
from ..files import TEMP_NAME, sha256_file
from ..model.model_description import ModelDescription
from ..outputs.render import legend
from .inputs import Inputs, discover
from .journal import JOB_FILE, Journal, JobError, job_changes, read_job, settings_digest, state_folder
from .lock import OutputLock
from .plan import KEEP_NEW, KEPT, SKIP, TODO, Item, Plan, make_row
from .spec import OutputSpec
from .store import Store

Executor = Callable[[Iterable[Item], Callable[[list[dict]], None], threading.Event], None]
MAX_FAILURES = 100  # failures a summary keeps to print; the manifest has every one


@dataclass
class Summary:
    """What a job did: counts of items done, skipped (done earlier), kept (outputs that were
    there before, not overwritten) and failed (``failures`` holds the first errors), the
    frames and videos among them, the wall time, whether it was interrupted (a rerun of the
    same command resumes it) and, if the manifest could not be exported, why."""

    done: int = 0
    skipped: int = 0
    kept: int = 0
    failed: int = 0
    frames: int = 0
    videos: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    interrupted: bool = False
    manifest_error: str = ""

    @property
    def images_per_s(self) -> float:
        images = self.done - self.videos
        return images / self.seconds if self.seconds > 0 else 0.0

    def count(self, row: dict) -> None:
        if row["status"] == "done":
            self.done += 1
            if "frames" in row:
                self.videos += 1
                self.frames += row["frames"]
        elif row["status"] == "failed":
            self.failed += 1
            if len(self.failures) < MAX_FAILURES:
                self.failures.append(row["error"])

    def line(self) -> str:
        videos = f" ({self.videos} videos, {self.frames} frames)" if self.videos else ""
        kept = f" ({self.kept} kept: there before this job; --force overwrites)" if self.kept else ""
        stop = "; interrupted: rerun the same command to resume" if self.interrupted else ""
        return (f"{self.done} done{videos}, {self.skipped + self.kept} skipped{kept}, {self.failed} failed in "
                f"{self.seconds:.1f} s ({self.images_per_s:.1f} images/s){stop}")


def job_record(model: str, spec: OutputSpec, inputs_root: str, description: ModelDescription | None = None) -> dict:
    """What every output depends on; ``job.json`` holds it and a rerun must match it: the
    model file's sha256 and the description it runs with (``--input-size`` changes it), the
    outputs' settings and the inputs' root. A metric model's heatmap ``legend`` is there too,
    for people and tools reading the outputs (it follows from the description and colormap)."""
    try:
        version = metadata.version("midas-onnx")
    except metadata.PackageNotFoundError:
        version = "unknown"
    record = {"model_sha256": sha256_file(model),
              "description": json.loads(description.to_json()) if description is not None else None,
              "outputs": spec.record(), "inputs_root": inputs_root, "midas_onnx": version}
    about = legend(description.output, spec.colormap) if description is not None else None
    if about is not None:
        record["legend"] = about
    return record


class Todo:
    """The items to run: ``len`` is known, the items are read from the plan as they go."""

    def __init__(self, job: "Job") -> None:
        self.job = job

    def __len__(self) -> int:
        return self.job.plan.counts[TODO]

    def __iter__(self) -> Iterator[Item]:
        return self.job.plan.items(TODO, self.job.inputs.root, self.job.store, self.job.spec)


class Job:
    """Made by ``prepare`` (OUTPUT locked, nothing else written yet), then ``run`` once with
    an executor; ``close`` (done by ``run``) releases OUTPUT."""

    def __init__(self, store: Store, spec: OutputSpec, inputs: Inputs, record: dict, plan: Plan) -> None:
        self.store, self.spec, self.inputs, self.record, self.plan = store, spec, inputs, record, plan
        self.digest = settings_digest({k: v for k, v in record.items() if k != "midas_onnx"})
        self.todo = Todo(self)
        self.journal: Journal | None = None
        self.lock: OutputLock | None = None
        self.manifest_present = False
        self._stop = threading.Event()

    @property
    def manifest(self) -> str:
        return self.journal.manifest if self.journal else self.store.join("manifest.jsonl")

    @property
    def problems(self) -> list[str]:
        return self.inputs.problems

    @property
    def skipped(self) -> int:
        return self.plan.counts[SKIP]

    @property
    def kept(self) -> int:
        return self.plan.counts[KEPT] + self.plan.counts[KEEP_NEW]

    @classmethod
    def prepare(cls, inputs: Sequence[str], output: str, model: str, spec: OutputSpec, *, force: bool = False,
                command: str = "a midas-onnx job", description: ModelDescription | None = None) -> "Job":
        """Find inputs, check OUTPUT's settings, lock OUTPUT, plan. Refusals (``JobError``)
        happen here, before any output is written or any worker starts. ``description``: the
        model's as the job runs it (``DepthHeatmapper(...).info.description``; ``heatmap`` and
        ``bulk`` always give it), recorded so that a rerun with another model, input size or
        description is refused."""
        store = Store(output)
        plan = Plan()
        try:
            found = discover(inputs, output, plan.add)
            if not found.count:
                raise JobError("no input files" + "".join(f"; {p}" for p in found.problems))
            job = cls(store, spec, found, job_record(model, spec, found.root, description), plan)
            old = read_job(store)
            changes = job_changes(old, job.record) if old is not None and not force else []
            if changes:
                raise JobError(f"{store.root} holds outputs made with other settings ({'; '.join(changes)}); "
                               "rerun with --force to redo them all, or write to another OUTPUT")
            job._open(command, owned=old is not None, force=force)
        except BaseException:
            plan.close()
            raise
        return job

    def _open(self, command: str, *, owned: bool, force: bool) -> None:
        folder = state_folder(self.store)
        self.lock = OutputLock(folder, self.store.root).acquire(command)
        try:
            self.journal = Journal(self.store, folder)
            self.plan.list_outputs(self.store)
            self._remove_temps()
            self.manifest_present = self.plan.db.execute(
                "SELECT 1 FROM present WHERE name = 'manifest.jsonl'").fetchone() is not None
            self.plan.decide(self.journal.path, self.inputs.root, self.spec, self.digest, force=force, owned=owned)
        except BaseException:
            self.close()
            raise

    def _remove_temps(self) -> None:
        """Files a killed job was writing (``TEMP_NAME``, see ``write_atomic``): never
        under an output's name, and nobody else's while this job holds OUTPUT."""
        if not self.store.local:
            return
        for (name,) in self.plan.db.execute("SELECT name FROM present WHERE name GLOB '*.tmp' AND size >= 0"):
            if TEMP_NAME.search(name):
                Path(self.store.fs_path(self.store.join(name))).unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop as Ctrl-C does: nothing new starts, what runs finishes and is journaled."""
        self._stop.set()

    def run(self, execute: Executor, on_row: Callable[[dict], None] | None = None) -> Summary:
        """Run every planned item; each finished row is journaled, then counted and given to
        ``on_row``. Ctrl-C or SIGTERM: the first stops the job as ``stop`` does, a second
        abandons what runs. The manifest is exported at the end, also when interrupted."""
        started = time.perf_counter()
        summary = Summary(skipped=self.skipped, kept=self.kept)

        def finished(rows: list[dict]) -> None:
            self.journal.append(rows)  # committed before anything reports them
            for row in rows:
                summary.count(row)
                if on_row is not None:
                    on_row(row)

        try:
            with _graceful_interrupt(self._stop):
                self._record_kept()  # before job.json: a killed run never leaves a user's file unrecorded
                self.store.write(self.store.join(JOB_FILE), (json.dumps(self.record, indent=2) + "\n").encode())
                if len(self.todo):
                    execute(self.todo, finished, self._stop)
        except KeyboardInterrupt:  # a second Ctrl-C: what finished is journaled; a rerun resumes from it
            summary.interrupted = True
        finally:
            summary.interrupted |= self._stop.is_set()
            try:
                if self.journal.stale(self.manifest_present):
                    self.journal.export()
            except (MidasOnnxError, OSError) as exc:
                summary.manifest_error = f"{exc}; its rows are kept in {self.journal.path} and the next run exports them"
            finally:
                self.close()
                summary.seconds = time.perf_counter() - started
        return summary

    def _record_kept(self) -> None:
        batch = []
        for item in self.plan.items(KEEP_NEW, self.inputs.root, self.store, self.spec):
            batch.append(make_row(item, "kept", self.digest))
            if len(batch) >= 4096:
                self.journal.append(batch)
                batch = []
        self.journal.append(batch)

    def close(self) -> None:
        """Release OUTPUT and the plan (idempotent)."""
        if self.journal is not None:
            self.journal.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        self.plan.close()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _graceful_interrupt(stop: threading.Event):
    """The first SIGINT/SIGTERM sets ``stop``; a second raises KeyboardInterrupt. Only in the
    main thread (where Python runs signal handlers); elsewhere signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
