"""Whole collections to depth maps on Ray Data: a fresh embedded local Ray by default, a
cluster with ``address``.

What moves: the object store carries input *paths* (local files the workers can read, or
URIs any node opens through pyarrow); bytes are shipped through Ray only for local inputs on
a cluster without a shared filesystem (``ship_bytes``). A pool of actors, each holding one
``DepthHeatmapper`` (session made once per actor), runs the runtime's own pipeline: reads and
decodes in a small thread pool, session calls of up to ``SESSION_BATCH`` images of one
network shape (``predict_batch``), colouring and encoding in the thread pool again.

What survives: the driver appends every finished row to ``OUTPUT/manifest.jsonl`` and
flushes it as batches finish, so a killed driver leaves every finished input recorded; the
end of a run rewrites it atomically with one row per input. ``OUTPUT/job.json`` records the
model's sha256 and the output settings; a rerun with other ones is refused (``--force`` redoes
everything), so old and new outputs never mix.

What is bounded: a batch whose worker dies (a crash, out of memory) is retried
``TASK_RETRIES`` times; its inputs are then tried one by one, and an input that still kills
its worker becomes a failed row. An actor that cannot start is retried
``ACTOR_INIT_RETRIES`` times, then the job stops with one line naming the cause.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow.fs as pafs

from runtime.depth_files import check_format, encode_depth
from runtime.errors import MidasOnnxError
from runtime.outputs import IMAGE_EXTENSIONS, expand_inputs, output_suffixes, render

MANIFEST = "manifest.jsonl"
JOB_FILE = "job.json"
DEPTH_MODES = ("none", "png16", "npy", "pfm", "exr")  # as `heatmap --save-depth` (runtime.depth_files)
# Images of one network shape per session call. The INT8 model at 640x480 (one thread, 2-core
# EPYC) costs 51-53 ms of CPU an image in calls of 2 or 4 and 59 ms in calls of 8: larger
# batches' activations outgrow the cache.
SESSION_BATCH = 4
TASK_RETRIES = 3
ACTOR_INIT_RETRIES = 3
# Fault injection for tests: a worker that reads an input whose name contains this exits
# at once, as a crash would (the test of bounded retries needs a real dying process).
CRASH_ENV = "MIDAS_ONNX_TEST_CRASH_ON"


class BulkError(MidasOnnxError):
    """A bulk job that cannot start or cannot go on; the message says why, in one line."""


@dataclass(frozen=True)
class BulkSettings:
    """How a bulk job runs. ``workers=None`` sizes the pool from the cluster's CPUs."""

    model: str
    address: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    # Images per actor call. Each call costs Ray Data ~22 ms of CPU on a 2-core EPYC
    # (`benchmarks.bulk_bench`, ray_data_task_cost): 16 images a call make that ~1.4 ms an
    # image, against 5.5 at 4. Inference goes SESSION_BATCH images at a time whatever this is.
    batch_size: int = 16
    save_depth: str = "none"
    colormap: str = "inferno"
    force: bool = False
    ship_bytes: bool = False
    verbose: bool = False
    # Share of a CPU each inference actor reserves per thread. Below 1 on purpose: actors
    # asking for whole CPUs left nothing for Ray's own work on 2 cores and the job stalled.
    cpu_share: float = 0.75

    def __post_init__(self) -> None:
        if self.save_depth not in DEPTH_MODES:
            raise ValueError(f"save_depth must be one of {DEPTH_MODES}, got {self.save_depth!r}")
        if self.save_depth != "none":
            check_format(self.save_depth)  # e.g. EXR where OpenCV cannot write it: said before Ray starts
        if self.batch_size < 1 or self.threads_per_worker < 1 or (self.workers is not None and self.workers < 1):
            raise ValueError("batch_size, threads_per_worker and workers must be >= 1")


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    nodes: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.done} done, {self.skipped} skipped, {self.failed} failed in {self.seconds:.1f} s "
                f"({self.images_per_s:.1f} images/s) on {len(self.nodes)} node(s)")


# --- locations (local folders, files, globs; or any pyarrow filesystem URI) ------------------
def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def list_inputs(spec: str, output: str) -> tuple[str, list[str]]:
    """(root, files). Local specs go through the runtime's own discovery (the same files
    `heatmap` would take; files inside OUTPUT never count); URIs are listed through pyarrow."""
    if "://" not in spec:
        out = None if "://" in output else Path(output)
        files, problems = expand_inputs([spec], exclude=out)
        files = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise BulkError(problems[0] if problems else f"{spec}: no images")
        root = os.path.commonpath([str(f.parent) for f in files])
        return root, [str(f) for f in files]
    fs, root = _fs(spec)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise BulkError(f"{spec}: no such file or folder")
    if info.type == pafs.FileType.File:
        return root.rsplit("/", 1)[0], [root]
    _, out_root = _fs(output) if "://" in output else (None, None)
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = sorted(e.path for e in entries if e.type == pafs.FileType.File
                   and os.path.splitext(e.path)[1].lower() in IMAGE_EXTENSIONS
                   and not (out_root and e.path.startswith(out_root.rstrip("/") + "/")))
    if not files:
        raise BulkError(f"{spec}: folder has no images")
    return root, files


def outputs_for(rel: str, out_root: str, save_depth: str) -> dict[str, str]:
    """Mirror of the input's relative path, full name kept: ``x/a.jpg`` -> ``OUT/x/a.jpg.heatmap.png``."""
    base = f"{out_root.rstrip('/')}/{rel}"
    return {kind: base + suffix for kind, suffix in output_suffixes(save_depth).items()}


def manifest_row(path: str, relative: str, status: str, outputs: list[str], error: str = "", *, node: str = "",
                 host: str = "", pid: int = 0, seconds: float = 0.0) -> dict:
    """One manifest row. Outputs travel as a JSON string (one Arrow string column through Ray
    Data) and are written to the manifest as a list. Rows made on the driver (skipped inputs,
    inputs whose worker kept dying) have no node, host or pid."""
    return {"input": path, "relative": relative, "status": status, "outputs": json.dumps(outputs), "error": error,
            "node": node, "host": host, "pid": pid, "seconds": seconds, "finished": time.time()}


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    return path[len(root):] if path.startswith(root) else os.path.basename(path)


# --- the actor -------------------------------------------------------------------------------
class HeatmapWorker:
    """One per Ray actor: the session is created here, once, and reused for every batch."""

    def __init__(self, model: str, threads: int, colormap: str, save_depth: str, in_uri: str, in_root: str,
                 out_uri: str) -> None:
        import ray

        from runtime import DepthHeatmapper

        self.hm = DepthHeatmapper(model, threads=threads, colormap=colormap)
        self.save_depth = save_depth
        self.in_fs, _ = _fs(in_uri)
        self.in_root = in_root
        self.out_fs, self.out_root = _fs(out_uri)
        self.io = ThreadPoolExecutor(2, thread_name_prefix="io")  # decode/encode overlap inference
        self.node = ray.get_runtime_context().get_node_id()
        self.host = socket.gethostname()
        self.crash_on = os.environ.get(CRASH_ENV)
        if self.crash_on == "__init__":
            raise RuntimeError("worker start failed (fault injected for tests)")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        paths = [str(p) for p in batch["path"]]
        blobs = list(batch["bytes"]) if "bytes" in batch else [None] * len(paths)
        t0 = time.perf_counter()
        rels = [_relative(p, self.in_root) for p in paths]
        outs = [outputs_for(rel, self.out_root, self.save_depth) for rel in rels]
        loaded = list(self.io.map(self._load, paths, blobs))
        errors = [item if isinstance(item, str) else "" for item in loaded]
        ok = [i for i, error in enumerate(errors) if not error]
        if ok:
            try:
                results = self.hm.predict_batch([loaded[i] for i in ok], per_call=SESSION_BATCH)
            except MidasOnnxError as exc:
                results = [exc] * len(ok)
            for i, error in zip(ok, self.io.map(self._write, [paths[i] for i in ok], [outs[i] for i in ok], results),
                                strict=True):
                errors[i] = error
        seconds = (time.perf_counter() - t0) / max(1, len(paths))
        rows = [manifest_row(path, rel, "failed" if error else "done", [] if error else list(out.values()), error,
                             node=self.node, host=self.host, pid=os.getpid(), seconds=seconds)
                for path, rel, out, error in zip(paths, rels, outs, errors, strict=True)]
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}

    def _load(self, path: str, data):
        """Decoded pixels, or the error message."""
        from runtime import images

        if self.crash_on and self.crash_on in path:
            os._exit(17)  # fault injection: see CRASH_ENV
        try:
            if data is None:
                with self.in_fs.open_input_stream(path) as fh:
                    data = fh.read()
            return images.load(images.decode(bytes(data), path, self.hm.max_pixels))
        except MidasOnnxError as exc:
            return str(exc)
        except OSError as exc:
            return f"{path}: cannot be read ({exc.strerror or exc})"

    def _write(self, path: str, outs: dict[str, str], result) -> str:
        """Write the outputs (each written beside, then renamed); the error message, or ''."""
        if isinstance(result, Exception):
            return str(result)
        try:
            payloads = {"heatmap": render(result, "heatmap")}
            if "depth" in outs:
                payloads["depth"] = encode_depth(result.depth, self.save_depth)
            for kind, target in outs.items():
                _write_atomic(self.out_fs, target, payloads[kind])
        except (MidasOnnxError, OSError) as exc:
            return f"{path}: could not write output ({exc})"
        return ""


def _write_atomic(fs: pafs.FileSystem, path: str, payload: bytes) -> None:
    """Write then rename, so an interrupted job never leaves a half file that resume would skip."""
    if isinstance(fs, pafs.LocalFileSystem):
        from runtime.files import write_atomic

        write_atomic(path, payload)
        return
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with fs.open_output_stream(tmp) as fh:
        fh.write(payload)
    fs.move(tmp, path)


# --- the driver ------------------------------------------------------------------------------
def job_record(settings: BulkSettings) -> dict:
    """What outputs depend on: a rerun with anything else here would mix two kinds of output."""
    from midas_onnx import __version__

    digest = hashlib.sha256()
    with open(settings.model, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"model_sha256": digest.hexdigest(), "colormap": settings.colormap.lower(),
            "save_depth": settings.save_depth, "midas_onnx": __version__}


def check_job(settings: BulkSettings, output: str, record: dict) -> None:
    """Refuse to resume into OUTPUT made with another model or other output settings."""
    fs, root = _fs(output)
    path = f"{root.rstrip('/')}/{JOB_FILE}"
    if settings.force or fs.get_file_info(path).type != pafs.FileType.File:
        return
    with fs.open_input_stream(path) as fh:
        old = json.loads(fh.read().decode() or "{}")
    changed = [k for k in ("model_sha256", "colormap", "save_depth") if old.get(k) != record[k]]
    if changed:
        what = ", ".join(f"{k} {str(old.get(k))[:12]} -> {str(record[k])[:12]}" for k in changed)
        raise BulkError(f"{output} holds outputs made with other settings ({what}); rerun with --force to redo "
                        "them all, or write to another OUTPUT")


def plan(settings: BulkSettings, inputs: str, output: str) -> tuple[str, list[str], list[dict]]:
    """(input root, files to process, manifest rows of files skipped because their outputs exist)."""
    in_root, files = list_inputs(inputs, output)
    out_fs, out_root = _fs(output)
    todo, skipped = [], []
    for path in files:
        rel = _relative(path, in_root)
        outs = outputs_for(rel, out_root, settings.save_depth)
        if not settings.force and all(out_fs.get_file_info(p).type == pafs.FileType.File for p in outs.values()):
            skipped.append(manifest_row(path, rel, "skipped", list(outs.values())))
        else:
            todo.append(path)
    return in_root, todo, skipped


def run(settings: BulkSettings, inputs: str, output: str) -> tuple[Summary, list[dict]]:
    """Process a collection; returns the summary and every manifest row (also written to OUTPUT)."""
    from runtime import DepthHeatmapper

    t0 = time.perf_counter()
    # Ray Data's import (~0.6 s of Python) runs beside the driver's own checks, which spend
    # their time in onnxruntime, hashlib and the filesystem; Ray itself starts only after them.
    importer = threading.Thread(target=_import_if_present, args=("ray.data",), name="import-ray-data")
    importer.start()
    try:
        DepthHeatmapper(settings.model, threads=1, colormap=settings.colormap)  # the model, checked before Ray starts
        record = job_record(settings)
        check_job(settings, output, record)
        in_root, todo, rows = plan(settings, inputs, output)
        journal = Journal(output)
        journal.write_job(record)
    finally:
        importer.join()
    if todo:
        rows += _with_ray(settings, lambda: list(_process(settings, inputs, in_root, todo, output, journal)))
    rows = _dedupe(rows)
    summary = Summary(seconds=time.perf_counter() - t0)
    for row in rows:
        setattr(summary, row["status"], getattr(summary, row["status"]) + 1)
        if row["node"]:
            summary.nodes[row["node"]] = summary.nodes.get(row["node"], 0) + 1
    journal.finish(rows)
    return summary, rows


def _import_if_present(module: str) -> None:
    """Import ahead of use; a missing module is reported where it is used, not from a thread."""
    with contextlib.suppress(ImportError):
        importlib.import_module(module)


def _with_ray(settings: BulkSettings, work):
    """Run ``work`` with Ray up: a fresh local instance unless an address was given (never
    a cluster that happens to be running), quiet unless ``verbose``.

    Quiet means the process's own stdout and stderr go to a log file while Ray runs: Ray's
    C++ core, its raylet messages ("Task ... failed, 3 retries remaining") and its Python
    tracebacks all write there, whatever their logger. The file is named in the error line
    when the job stops, and removed when it succeeds.
    """
    import ray

    level = logging.INFO if settings.verbose else logging.CRITICAL
    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(level)
    with _quiet(not settings.verbose) as log_path:
        started_here = not ray.is_initialized()
        try:
            if started_here:
                ray.init(address=settings.address or "local", include_dashboard=False,
                         log_to_driver=settings.verbose, configure_logging=True, logging_level=level)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = settings.verbose
            ctx.print_on_execution_start = settings.verbose
            ctx.actor_init_max_retries = ACTOR_INIT_RETRIES
            ctx.max_errored_blocks = -1  # a batch that fails after its retries is reported, not fatal
            result = work()
        except MidasOnnxError:
            raise
        except Exception as exc:  # Ray's own errors: one line naming the cause
            if settings.verbose:
                raise
            where = f" (Ray's output: {log_path})" if log_path else ""
            raise BulkError(f"the bulk job stopped: {_cause(exc)}{where}") from None
        finally:
            if started_here:
                _shutdown_local_ray()
    if log_path:
        Path(log_path).unlink(missing_ok=True)
    return result


def _shutdown_local_ray() -> None:
    """``ray.shutdown()`` without the second it loses on every local run.

    Ray stops its GCS before the autoscaler monitor; the monitor's SIGTERM handler then
    reports its own end to the dead GCS and blocks until Ray's one-second grace period runs
    out (the same order was fixed for ``ray stop`` in ray-project/ray#30672, not for
    ``ray.shutdown``). The monitor of a local Ray we started holds no state, so it is killed
    first. Private Ray API: if it moves, shutdown is merely a second slower.
    """
    import ray

    try:
        from ray._private import ray_constants
        from ray._private.worker import _global_node

        if _global_node is not None and _global_node.is_head():
            _global_node._kill_process_type(ray_constants.PROCESS_TYPE_MONITOR, check_alive=False,
                                            allow_graceful=False)
    except Exception:  # noqa: BLE001 - only a speed-up; ray.shutdown below still stops everything
        pass
    ray.shutdown()


@contextlib.contextmanager
def _quiet(enabled: bool):
    """File descriptors 1 and 2 into a log file (yielding its path), restored afterwards."""
    if not enabled:
        yield None
        return
    import sys
    import tempfile

    fd, path = tempfile.mkstemp(prefix="midas-bulk-ray-", suffix=".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def _cause(exc: BaseException) -> str:
    """The innermost meaningful line of a Ray error chain."""
    text = str(exc)
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "Traceback", "During handling")) and ":" in line:
            return line[:400]
    return (text.strip().splitlines() or [type(exc).__name__])[0][:400]


def _process(settings: BulkSettings, inputs: str, in_root: str, todo: list[str], output: str,
             journal: "Journal") -> Iterator[dict]:
    """Every input once: in batches, then one by one for inputs whose batch never came back
    (its worker died ``TASK_RETRIES`` times), then failed rows for inputs that still did not."""
    finished: set[str] = set()
    for batch_size in (settings.batch_size, 1):
        left = [p for p in todo if p not in finished]
        if not left or (batch_size == 1 and settings.batch_size == 1 and finished):
            break
        for row in _run_pass(settings, inputs, in_root, left, output, batch_size):
            journal.append(row)
            finished.add(row["input"])
            yield row
        if batch_size == 1:
            break
    for path in todo:
        if path not in finished:
            row = manifest_row(path, _relative(path, in_root), "failed", [],
                               f"{path}: the worker process died on each of {TASK_RETRIES + 1} tries with this "
                               "input alone (a crash, or out of memory); skipped")
            journal.append(row)
            yield row


def _run_pass(settings: BulkSettings, inputs: str, in_root: str, paths: list[str], output: str,
              batch_size: int) -> Iterable[dict]:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    workers = settings.workers or max(1, int(cpus // settings.threads_per_worker))
    batch_size = call_size(len(paths), batch_size, workers)
    tasks = math.ceil(len(paths) / batch_size)
    in_uri = inputs if "://" in inputs else "/"
    if settings.ship_bytes and "://" not in inputs:
        ds = ray.data.read_binary_files(paths, include_paths=True, ray_remote_args={"num_cpus": 0.1})
    else:
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=tasks)
    worker = _bound_worker(model=str(Path(settings.model).resolve()), threads=settings.threads_per_worker,
                           colormap=settings.colormap, save_depth=settings.save_depth, in_uri=in_uri,
                           in_root=in_root, out_uri=output)
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for task retries and warns on the keyword its own
        # docs give for it; without it a batch that kills its worker is retried forever.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            worker,
            batch_size=batch_size,
            # One by one (the pass that isolates an input that kills its worker), each actor
            # holds one task at a time: tasks queued behind a dying one would fail with it and
            # use up their own retries, turning innocent inputs into failed rows.
            compute=ray.data.ActorPoolStrategy(size=min(workers, tasks),
                                               max_tasks_in_flight_per_actor=1 if batch_size == 1 else None),
            num_cpus=settings.cpu_share * settings.threads_per_worker,
            max_restarts=-1,  # a lost actor (node gone, process killed) is replaced ...
            max_task_retries=TASK_RETRIES,  # ... and its batch re-run, a bounded number of times
        )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["input"])):
            yield {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}


def call_size(inputs: int, batch_size: int, workers: int) -> int:
    """Images per actor call: ``batch_size``, or fewer when a job has less than a batch for
    every worker, so that every worker gets some (12 photos on 2 workers: 6 and 6, not 12 and 0)."""
    return max(1, min(batch_size, math.ceil(inputs / workers)))


def _bound_worker(**kwargs) -> type:
    """HeatmapWorker with its arguments bound in the class, so that restarting an actor never
    depends on constructor arguments held in the object store (Ray warns that those can be
    lost with the node that held them)."""
    def __init__(self) -> None:
        HeatmapWorker.__init__(self, **kwargs)

    return type("HeatmapWorker", (HeatmapWorker,), {"__init__": __init__})


def _dedupe(rows: list[dict]) -> list[dict]:
    """One row per input: a batch re-run after a failure may report an input twice; keep the last."""
    by_input: dict[str, dict] = {}
    for row in rows:
        by_input[row["input"]] = row
    return sorted(by_input.values(), key=lambda r: r["relative"])


class Journal:
    """``OUTPUT/manifest.jsonl``: rows appended and flushed as they finish (a killed driver
    loses nothing finished), rewritten atomically at the end with one row per input.

    Local outputs are appended in place; for URI outputs (object stores cannot append) the
    journal is kept in a local file beside the driver and uploaded at the end.
    """

    def __init__(self, output: str) -> None:
        self.fs, self.root = _fs(output)
        self.fs.create_dir(self.root, recursive=True)
        self.path = f"{self.root.rstrip('/')}/{MANIFEST}"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.local:
            journal = self.path
        else:
            key = hashlib.sha256(output.encode()).hexdigest()[:16]
            journal = str(Path.home() / ".cache" / "midas-onnx" / f"journal-{key}.jsonl")
            Path(journal).parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(journal, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
        self._fh.seek(0, os.SEEK_END)
        if self._fh.tell() > 0:
            self._fh.seek(self._fh.tell() - 1)
            if self._fh.read(1) != "\n":  # a line cut short by a killed driver: end it
                self._fh.write("\n")
        self.journal = journal

    def write_job(self, record: dict) -> None:
        _write_atomic(self.fs, f"{self.root.rstrip('/')}/{JOB_FILE}", (json.dumps(record, indent=2) + "\n").encode())

    def append(self, row: dict) -> None:
        self._fh.write(json.dumps(_manifest_row(row), sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def finish(self, rows: list[dict]) -> None:
        self._fh.close()
        payload = "".join(json.dumps(_manifest_row(r), sort_keys=True) + "\n" for r in rows).encode()
        _write_atomic(self.fs, self.path, payload)
        if not self.local:
            Path(self.journal).unlink(missing_ok=True)


def _manifest_row(row: dict) -> dict:
    outputs = row["outputs"]
    return {**row, "outputs": json.loads(outputs) if isinstance(outputs, str) else outputs}


def read_manifest(output: str) -> list[dict]:
    """Rows of OUTPUT's manifest; a last line cut short by a killed driver is ignored."""
    fs, root = _fs(output)
    with fs.open_input_stream(f"{root.rstrip('/')}/{MANIFEST}") as fh:
        rows = []
        for line in fh.read().decode().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

