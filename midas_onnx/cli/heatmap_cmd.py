"""``midas-onnx heatmap``: images, folders, globs and videos to depth heatmaps."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from .common import MODEL_HELP, default_model, friendly_errors

PROGRESS_MIN_ITEMS = 5  # fewer items than this: no progress bar, just the summary


@click.command("heatmap")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the results (created if needed).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help=MODEL_HELP)
@click.option("--colormap", default="inferno", show_default=True, help="Any OpenCV colormap name (turbo, magma, jet, ...).")
@click.option("--save-depth", type=click.Choice(["png16", "npy", "pfm", "exr"]), is_flag=False, flag_value="png16",
              default=None, help="Also write the depth: png16 (the default of a bare --save-depth: 16-bit, "
                                 "normalised), npy or pfm (float32, exact), exr (where OpenCV has the codec). "
                                 "<name>.depth.<ext>; videos: a <name>.depth/ folder of frames.")
@click.option("--known-depths", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CSV of x,y,depth_m (pixels, metres): depth files and point clouds hold metres, fitted "
                   "to these points; <name>.align.json records the fit. Applies to every image.")
@click.option("--save-ply", is_flag=True, help="Also write a coloured point cloud, <name>.ply (binary PLY).")
@click.option("--ply-step", type=click.IntRange(min=1), default=1, show_default=True,
              help="One point per N pixels in x and y.")
@click.option("--fov", type=click.FloatRange(0, 180, min_open=True, max_open=True), default=None,
              help="Horizontal field of view in degrees, for point clouds (default 60).")
@click.option("--intrinsics", default=None, help="Camera intrinsics fx,fy,cx,cy in pixels, for point clouds.")
@click.option("--normalize", type=click.Choice(["video", "frame"]), default="video", show_default=True,
              help="Videos: colour range carried across frames (steady colours) or each frame's own min/max.")
@click.option("--overlay", is_flag=True,
              help="Also write the heatmap blended over the photo (<name>.overlay.png; videos: <name>.overlay.mp4).")
@click.option("--force", is_flag=True, help="Redo every input, overwriting existing outputs, and outputs made with "
                                          "other settings (refused otherwise).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Images in flight, each through the whole pipeline (default: one per CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads per image (default: 1 with several workers; all cores with one).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Refuse larger images (default 100,000,000).")
def command(inputs: tuple[str, ...], outdir: Path, model: Path | None, colormap: str, save_depth: str | None,
            known_depths: Path | None, save_ply: bool, ply_step: int, fov: float | None, intrinsics: str | None,
            normalize: str, overlay: bool, force: bool, workers: int | None, threads: int | None,
            max_pixels: int | None) -> None:
    """Write a depth heatmap for every image in INPUTS (files, folders, globs) and every video.

    \b
    Output names cannot collide: each input's path relative to the common folder of all
    inputs is mirrored under OUTPUT, keeping the full file name with its extension:
      photos/a.jpg -> OUTPUT/a.jpg.heatmap.png   (+ a.jpg.depth.png, a.jpg.overlay.png)
      photos/x/a.png -> OUTPUT/x/a.png.heatmap.png
      clip.mp4 -> OUTPUT/clip.mp4.heatmap.mp4    (frames streamed, never all in memory)
    OUTPUT/manifest.jsonl gets a row per input (done / skipped / failed, outputs, error) and
    OUTPUT/job.json the settings: a rerun skips inputs done with the same settings and
    refuses other settings, other inputs' root or another model (--force redoes all). Files
    that were in OUTPUT before are never overwritten without --force. A corrupt, empty or
    oversized file is reported by name; the exit status is then 1. Files inside OUTPUT are
    never inputs.
    """
    from runtime import DepthHeatmapper, images
    from runtime.engine import Job, LocalRunner, OutputSpec, OutputSpecError
    from runtime.metric import read_points

    with friendly_errors():
        try:
            spec = OutputSpec.make(colormap=colormap, depth=save_depth, overlay=overlay, ply=save_ply,
                                   ply_step=ply_step, fov=fov, intrinsics=intrinsics, normalize=normalize,
                                   points=read_points(known_depths) if known_depths else None)
        except OutputSpecError as exc:  # options that cannot go together: a usage error (status 2)
            raise click.UsageError(str(exc)) from None
        model = default_model(model)
        workers = workers or len(os.sched_getaffinity(0))
        if threads is None and workers > 1:
            threads = 1
        hm = DepthHeatmapper(model, threads=threads, colormap=colormap, max_pixels=max_pixels or images.MAX_PIXELS)
        job = Job.prepare(list(inputs), str(outdir), str(model), spec, force=force)
    for message in job.inputs.problems:
        click.echo(f"error: {message}", err=True)
    click.echo(f"model: {model} ({hm.info.precision}, input {hm.info.input_size_text}); "
               f"{workers} worker{'s' * (workers > 1)} x {threads or 'all'} thread{'s' * (threads != 1)}", err=True)
    with _progress(len(job.todo)) as on_row, friendly_errors():
        summary = job.run(LocalRunner(hm, spec, job.store, job.digest, workers), on_row)
    click.echo(f"{summary.line()} -> {outdir}; manifest: {job.manifest}")
    if summary.failed or job.inputs.problems:
        sys.exit(1)


@contextlib.contextmanager
def _progress(total: int):
    """A progress bar for jobs of several inputs; each failure printed above it as it happens."""
    from tqdm import tqdm

    with tqdm(total=total, unit="file", disable=total < PROGRESS_MIN_ITEMS, file=sys.stderr) as bar:
        def on_row(row: dict) -> None:
            if row["status"] == "failed":
                tqdm.write(f"error: {row['error']}", file=sys.stderr)
            bar.update(1)

        yield on_row
