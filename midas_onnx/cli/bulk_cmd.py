"""``midas-onnx bulk``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import MODEL_HELP, default_model, friendly_errors, require_extra


@click.command("bulk")
@click.argument("inputs")
@click.argument("output")
@click.option("--model", default=None, help=MODEL_HELP + " It must be readable on every node.")
@click.option("--address", default=None,
              help="Ray cluster address (e.g. ray://head:10001 or auto). Default: a fresh embedded local Ray.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Inference actors (default: cluster CPUs / threads).")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per actor call (Ray's own cost is per call); inference then takes the "
                   "call's images of one network shape 4 at a time.")
@click.option("--save-depth", type=click.Choice(["none", "png16", "npy", "pfm", "exr"]), default="none", show_default=True,
              help="Also write the depth: png16 (16-bit, normalised), npy or pfm (float32), exr.")
@click.option("--colormap", default="inferno", show_default=True)
@click.option("--ship-bytes", is_flag=True,
              help="Send local files' bytes through Ray (a cluster whose nodes cannot read INPUTS' paths).")
@click.option("--force", is_flag=True, help="Redo inputs whose outputs exist, and outputs made with other settings.")
@click.option("--verbose", is_flag=True, help="Show Ray's own logs, progress and tracebacks.")
def command(inputs: str, output: str, model: str | None, address: str | None, workers: int | None,
            threads_per_worker: int, batch_size: int, save_depth: str, colormap: str, ship_bytes: bool,
            force: bool, verbose: bool) -> None:
    """Depth heatmaps for a whole collection on Ray Data.

    \b
    INPUTS: a folder, a glob, or a URI pyarrow reads (s3://bucket/photos, gs://...).
    OUTPUT: a folder or URI. Outputs mirror the inputs' relative paths with the full name
    kept (x/a.jpg -> OUTPUT/x/a.jpg.heatmap.png). OUTPUT/manifest.jsonl gets a row per input
    as it finishes (done / skipped / failed, outputs, error, node, time), so a killed job
    loses nothing finished; a rerun skips inputs whose outputs exist and refuses OUTPUT made
    with another model or other output settings (--force redoes all). Exit status 1 when
    any input failed, 2 when the job cannot run (model, OUTPUT settings, workers that
    cannot start).
    """
    require_extra("ray", "ray")
    from bulk import BulkSettings, run
    from runtime.postprocess import colormap_id
    from runtime.session import missing_model_message

    with friendly_errors():
        colormap_id(colormap)
        model_path = default_model(Path(model) if model else None)
        if not model_path.is_file():
            _stop(missing_model_message(model_path))
        settings = BulkSettings(model=str(model_path), address=address, workers=workers,
                                threads_per_worker=threads_per_worker, batch_size=batch_size, save_depth=save_depth,
                                colormap=colormap, force=force, ship_bytes=ship_bytes, verbose=verbose)
        try:
            summary, rows = run(settings, inputs, output)
        except Exception as exc:
            from bulk.pipeline import BulkError
            from runtime.errors import ModelError

            if isinstance(exc, (ModelError, BulkError)):
                _stop(str(exc))  # the job cannot run: the model (checked before Ray starts), OUTPUT, workers
            raise
    for row in rows:
        if row["status"] == "failed":
            click.echo(f"failed: {row['error']}", err=True)  # every error names its input
    click.echo(summary.line() + f"; manifest: {output.rstrip('/')}/manifest.jsonl")
    if summary.failed:
        sys.exit(1)


def _stop(message: str) -> None:
    """The job cannot start: one line, exit status 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)
