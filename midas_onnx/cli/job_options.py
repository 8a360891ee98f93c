"""The output options ``heatmap`` and ``bulk`` share, declared once: both commands run one
job engine, so they take one set of options and build one ``OutputSpec`` from them."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Callable

import click

OUTPUT_OPTIONS = [
    click.option("--colormap", default="inferno", show_default=True,
                 help="Any OpenCV colormap name (turbo, magma, jet, ...)."),
    click.option("--format", "image_format", type=click.Choice(["png", "jpg", "webp"]), default="png",
                 show_default=True,
                 help="Heatmap and overlay files: png (lossless, indexed: a heatmap has at most 256 colours), jpg "
                      "(quality 90: smaller, faster), webp (quality 90: smallest, slowest)."),
    click.option("--save-depth", type=click.Choice(["png16", "npy", "pfm", "exr"]), is_flag=False,
                 flag_value="png16", default=None,
                 help="Also write the depth: png16 (the default of a bare --save-depth: 16-bit, normalised), npy "
                      "or pfm (float32, exact), exr (where OpenCV has the codec). <name>.depth.<ext>; videos: a "
                      "<name>.depth/ folder of frames."),
    click.option("--known-depths", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
                 help="CSV of x,y,depth_m (pixels, metres): depth files and point clouds hold metres, fitted to "
                      "these points; <name>.align.json records the fit. Applies to every image."),
    click.option("--save-ply", is_flag=True, help="Also write a coloured point cloud, <name>.ply (binary PLY)."),
    click.option("--ply-step", type=click.IntRange(min=1), default=1, show_default=True,
                 help="One point per N pixels in x and y."),
    click.option("--fov", type=click.FloatRange(0, 180, min_open=True, max_open=True), default=None,
                 help="Horizontal field of view in degrees, for point clouds (default 60)."),
    click.option("--intrinsics", default=None, help="Camera intrinsics fx,fy,cx,cy in pixels, for point clouds."),
    click.option("--normalize", type=click.Choice(["video", "frame"]), default="video", show_default=True,
                 help="Videos: colours steady across frames, or each frame's own min/max."),
    click.option("--overlay", is_flag=True,
                 help="Also write the heatmap blended over the photo (<name>.overlay.png; videos: "
                      "<name>.overlay.mp4)."),
    click.option("--force", is_flag=True,
                 help="Redo every input, overwriting existing outputs, also those made with other settings "
                      "(refused otherwise)."),
]
PROGRESS_MIN_ITEMS = 5  # fewer inputs than this: no progress bar, just the summary
SPEC_KEYS = ("colormap", "image_format", "save_depth", "known_depths", "save_ply", "ply_step", "fov", "intrinsics", "normalize",
             "overlay")


def output_options(command: Callable) -> Callable:
    """Decorate a command with the shared options; it receives ``spec`` (an ``OutputSpec``)
    and ``force`` in their place."""
    for option in reversed(OUTPUT_OPTIONS):
        command = option(command)

    @functools.wraps(command)
    def wrapper(**kwargs):
        kwargs["spec"] = make_spec(**{k: kwargs.pop(k) for k in SPEC_KEYS})
        return command(**kwargs)

    return wrapper


def make_spec(*, colormap, image_format, save_depth, known_depths, save_ply, ply_step, fov, intrinsics, normalize,
              overlay):
    """The ``OutputSpec``; options that cannot go together are a usage error (status 2)."""
    from runtime.engine import OutputSpec, OutputSpecError
    from runtime.errors import MidasOnnxError
    from runtime.depth.metric import read_points

    try:
        return OutputSpec.make(colormap=colormap, depth=save_depth, overlay=overlay, ply=save_ply, ply_step=ply_step,
                               fov=fov, intrinsics=intrinsics, normalize=normalize, image_format=image_format,
                               points=read_points(known_depths) if known_depths else None)
    except OutputSpecError as exc:
        raise click.UsageError(str(exc)) from None
    except MidasOnnxError as exc:
        raise click.ClickException(str(exc)) from None


def job_files(job) -> str:
    """Where a job's record is: the manifest, and for object-store OUTPUTs this machine's
    journal (the rows not yet in the manifest if the export failed)."""
    journal = "" if job.store.local else f" (journal: {job.journal.path})"
    return f"manifest: {job.manifest}{journal}"


def finish(summary, job) -> None:
    """The exit status of a finished job: 130 interrupted, 1 failures or a manifest that
    could not be written (said in one line), else 0."""
    if summary.manifest_error:
        click.echo(f"error: {summary.manifest_error}", err=True)
    if summary.interrupted:
        sys.exit(130)
    if summary.failed or job.problems or summary.manifest_error:
        sys.exit(1)


@contextlib.contextmanager
def progress(total: int):
    """A progress bar for jobs of several inputs; each failure printed above it as it happens."""
    from tqdm import tqdm

    with tqdm(total=total, unit="file", disable=total < PROGRESS_MIN_ITEMS, file=sys.stderr) as bar:
        def on_row(row: dict) -> None:
            if row["status"] == "failed":
                tqdm.write(f"error: {row['error']}", file=sys.stderr)
            bar.update(1)

        yield on_row


@contextlib.contextmanager
def traceback_log(command: str):
    """Tracebacks of unexpected library errors go to a log file (made only if one comes),
    never to the terminal: each failed input's row and line carry the error itself. Yields
    a function giving the file's path once something was written to it, else None."""
    import logging
    import os
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"midas-{command}-{os.getpid()}.log")
    if os.path.exists(path):
        os.unlink(path)  # an earlier process's, with the same pid
    handler = logging.FileHandler(path, delay=True)  # delay: no file until the first record
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("midas_onnx.job")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield lambda: path if os.path.exists(path) else None
    finally:
        logger.removeHandler(handler)
        handler.close()
