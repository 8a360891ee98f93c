"""Whole collections to depth maps on Ray Data: embedded local Ray by default, a cluster with
``address``. Ray Data reads the files; a pool of actors, each holding one ``DepthHeatmapper``
(session created once per actor), decodes, infers and writes; the driver collects one
manifest row per input.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.fs as pafs

from runtime.depth_files import FORMATS, check_format, encode_depth
from runtime.outputs import IMAGE_EXTENSIONS, render

MANIFEST = "manifest.jsonl"
DEPTH_MODES = ("none", "png16", "npy", "pfm", "exr")  # as `heatmap --save-depth` (runtime.depth_files)


@dataclass(frozen=True)
class BulkSettings:
    """How a bulk job runs. ``workers=None`` sizes the pool from the cluster's CPUs."""

    model: str
    address: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    batch_size: int = 8
    save_depth: str = "none"
    colormap: str = "inferno"
    force: bool = False
    # Share of a CPU each inference actor reserves per thread. Below 1 on purpose: actors
    # asking for whole CPUs left nothing for Ray Data's read tasks on 2 cores and the job
    # stalled forever ("backpressured: ResourceBudget").
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


# --- locations (local folders, globs, or any pyarrow filesystem URI) ---------------------------
def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def list_inputs(spec: str) -> tuple[pafs.FileSystem, str, list[str]]:
    """(filesystem, root, files) for a folder, a local glob, or a URI prefix."""
    if "://" not in spec and any(c in spec for c in "*?["):
        import glob

        files = sorted(str(Path(p).resolve()) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        files = [f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        root = os.path.commonpath([str(Path(f).parent) for f in files]) if files else str(Path(".").resolve())
        return pafs.LocalFileSystem(), root, files
    fs, root = _fs(spec)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{spec}: no such file or folder")
    if info.type == pafs.FileType.File:
        return fs, str(Path(root).parent), [root]
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = sorted(e.path for e in entries if e.type == pafs.FileType.File
                   and os.path.splitext(e.path)[1].lower() in IMAGE_EXTENSIONS)
    return fs, root, files


def outputs_for(rel: str, out_root: str, save_depth: str) -> dict[str, str]:
    """Mirror of the input's relative path, full name kept: ``x/a.jpg`` -> ``OUT/x/a.jpg.heatmap.png``."""
    base = f"{out_root.rstrip('/')}/{rel}"
    outs = {"heatmap": base + ".heatmap.png"}
    if save_depth != "none":
        outs["depth"] = base + FORMATS[save_depth][0]
    return outs


# --- the actor ---------------------------------------------------------------------------------
class HeatmapWorker:
    """One per Ray actor: the session is created here, once, and reused for every batch."""

    def __init__(self, model: str, threads: int, colormap: str, save_depth: str, in_root: str,
                 out_uri: str) -> None:
        from runtime import DepthHeatmapper

        self.hm = DepthHeatmapper(model, threads=threads, colormap=colormap)
        self.save_depth = save_depth
        self.in_root = in_root
        self.out_fs, self.out_root = _fs(out_uri)
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self.host = socket.gethostname()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self._one(path, data) for path, data in zip(batch["path"], batch["bytes"], strict=True)]
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}

    def _one(self, path: str, data: bytes) -> dict:
        from runtime import images
        from runtime.errors import MidasOnnxError

        t0 = time.perf_counter()
        rel = _relative(path, self.in_root)
        outs = outputs_for(rel, self.out_root, self.save_depth)
        row = {"input": path, "relative": rel, "status": "done", "outputs": json.dumps(list(outs.values())),
               "error": "", "node": self.node, "host": self.host, "pid": os.getpid()}
        try:
            result = self.hm.predict(images.decode(bytes(data), path, self.hm.max_pixels))
            self._write(outs["heatmap"], render(result, "heatmap"))
            if self.save_depth != "none":
                self._write(outs["depth"], encode_depth(result.depth, self.save_depth))
        except (MidasOnnxError, OSError) as exc:
            row.update(status="failed", error=str(exc), outputs="[]")
        row["seconds"] = time.perf_counter() - t0
        row["finished"] = time.time()
        return row

    def _write(self, path: str, payload: bytes) -> None:
        """Write then rename, so an interrupted job never leaves a half file that resume would skip."""
        parent = path.rsplit("/", 1)[0]
        self.out_fs.create_dir(parent, recursive=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with self.out_fs.open_output_stream(tmp) as fh:
            fh.write(payload)
        self.out_fs.move(tmp, path)


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    return path[len(root):] if path.startswith(root) else os.path.basename(path)


# --- the driver --------------------------------------------------------------------------------
def plan(settings: BulkSettings, inputs: str, output: str) -> tuple[pafs.FileSystem, str, list[str], list[dict]]:
    """(input fs, input root, files to process, manifest rows of files skipped because done)."""
    in_fs, in_root, files = list_inputs(inputs)
    out_fs, out_root = _fs(output)
    todo, skipped = [], []
    for path in files:
        rel = _relative(path, in_root)
        outs = outputs_for(rel, out_root, settings.save_depth)
        if not settings.force and all(out_fs.get_file_info(p).type == pafs.FileType.File for p in outs.values()):
            skipped.append({"input": path, "relative": rel, "status": "skipped", "outputs": json.dumps(list(outs.values())),
                            "error": "", "node": "", "host": "", "pid": 0, "seconds": 0.0, "finished": time.time()})
        else:
            todo.append(path)
    return in_fs, in_root, todo, skipped


def run(settings: BulkSettings, inputs: str, output: str) -> tuple[Summary, list[dict]]:
    """Process a collection; returns the summary and every manifest row (also written to OUTPUT)."""
    import ray

    t0 = time.perf_counter()
    in_fs, in_root, todo, rows = plan(settings, inputs, output)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="WARNING")
    try:
        if todo:
            rows += list(_process(settings, in_fs, in_root, todo, output))
    finally:
        if started_here:
            ray.shutdown()
    rows = _dedupe(rows)
    summary = Summary(seconds=time.perf_counter() - t0)
    for row in rows:
        setattr(summary, row["status"], getattr(summary, row["status"]) + 1)
        if row["node"]:
            summary.nodes[row["node"]] = summary.nodes.get(row["node"], 0) + 1
    write_manifest(output, rows)
    return summary, rows


def _process(settings: BulkSettings, in_fs, in_root: str, todo: list[str], output: str) -> Iterator[dict]:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    actor_cpus = settings.cpu_share * settings.threads_per_worker
    workers = settings.workers or max(1, int(cpus // settings.threads_per_worker))
    ds = ray.data.read_binary_files(todo, include_paths=True, filesystem=in_fs,
                                    ray_remote_args={"num_cpus": 0.1})  # reads are I/O: a sliver of CPU
    ds = ds.map_batches(
        HeatmapWorker,
        fn_constructor_kwargs={"model": str(Path(settings.model).resolve()), "threads": settings.threads_per_worker,
                               "colormap": settings.colormap, "save_depth": settings.save_depth,
                               "in_root": in_root, "out_uri": output},
        batch_size=settings.batch_size,
        concurrency=workers,
        num_cpus=actor_cpus,
        max_restarts=-1,  # a lost actor (node gone, process killed) is replaced ...
        max_task_retries=-1,  # ... and its batch re-run, so every input ends up done once
    )
    for row in ds.iter_rows():
        yield dict(row)


def _dedupe(rows: list[dict]) -> list[dict]:
    """One row per input: a batch re-run after a failure may report an input twice; keep the last."""
    by_input: dict[str, dict] = {}
    for row in rows:
        by_input[row["input"]] = row
    return sorted(by_input.values(), key=lambda r: r["relative"])


def write_manifest(output: str, rows: list[dict]) -> str:
    fs, root = _fs(output)
    fs.create_dir(root, recursive=True)
    path = f"{root.rstrip('/')}/{MANIFEST}"
    with fs.open_output_stream(path) as fh:
        for row in rows:
            fh.write((json.dumps({**row, "outputs": json.loads(row["outputs"])}, sort_keys=True) + "\n").encode())
    return path


def read_manifest(output: str) -> list[dict]:
    fs, root = _fs(output)
    with fs.open_input_stream(f"{root.rstrip('/')}/{MANIFEST}") as fh:
        return [json.loads(line) for line in fh.read().decode().splitlines() if line.strip()]


def settings_dict(settings: BulkSettings) -> dict:
    return asdict(settings)
