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
@click.option("--address", default=None, help="Ray cluster address (e.g. ray://head:10001 or auto). Default: local embedded Ray.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Inference actors (default: cluster CPUs / threads).")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--save-depth", type=click.Choice(["none", "png16", "npy", "pfm", "exr"]), default="none", show_default=True,
              help="Also write the depth: png16 (16-bit, normalised), npy or pfm (float32), exr.")
@click.option("--colormap", default="inferno", show_default=True)
@click.option("--force", is_flag=True, help="Redo inputs whose outputs exist (they are skipped otherwise).")
def command(inputs: str, output: str, model: str, address: str | None, workers: int | None, threads_per_worker: int,
            batch_size: int, save_depth: str, colormap: str, force: bool) -> None:
    """Depth heatmaps for a whole collection on Ray Data.

    \b
    INPUTS: a folder, a glob, or a URI pyarrow reads (s3://bucket/photos, gs://...).
    OUTPUT: a folder or URI. Outputs mirror the inputs' relative paths with the full name
    kept (x/a.jpg -> OUTPUT/x/a.jpg.heatmap.png), and OUTPUT/manifest.jsonl lists every input
    with its status (done / skipped / failed), outputs, error, node and time. A rerun skips
    inputs whose outputs exist, so an interrupted job continues where it stopped. Exit
    status 1 when any input failed.
    """
    require_extra("ray", "ray")
    from bulk import BulkSettings, run
    from runtime.postprocess import colormap_id

    with friendly_errors():
        colormap_id(colormap)
        model = str(default_model(Path(model) if model else None))
        settings = BulkSettings(model=model, address=address, workers=workers, threads_per_worker=threads_per_worker,
                                batch_size=batch_size, save_depth=save_depth, colormap=colormap, force=force)
        try:
            summary, rows = run(settings, inputs, output)
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc)) from None
    for row in rows:
        if row["status"] == "failed":
            click.echo(f"failed: {row['input']}: {row['error']}", err=True)
    click.echo(summary.line() + f"; manifest: {output.rstrip('/')}/manifest.jsonl")
    if summary.failed:
        sys.exit(1)
