"""``midas-onnx bulk``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import MODEL_HELP, default_model, require_extra
from .job_options import output_options


@click.command("bulk")
@click.argument("inputs", nargs=-1, required=True)
@click.argument("output")
@click.option("--model", default=None, help=MODEL_HELP + " It must be readable on every node.")
@click.option("--address", default=None,
              help="Ray cluster address (e.g. ray://head:10001 or auto). Default: a fresh embedded local Ray.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Ray workers (default: one per node).")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=None,
              help="Whole-image threads in each worker (default: its node's CPUs).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Inputs per Ray call (Ray's own cost is per call); fewer when a job is small.")
@output_options
@click.option("--ship-bytes", is_flag=True,
              help="Send local files' bytes through Ray (a cluster whose nodes cannot read INPUTS' paths).")
@click.option("--verbose", is_flag=True, help="Show Ray's own logs and tracebacks.")
def command(inputs: tuple[str, ...], output: str, model: str | None, address: str | None, workers: int | None,
            threads_per_worker: int | None, chunk_size: int, spec, force: bool, ship_bytes: bool,
            verbose: bool) -> None:
    """Depth heatmaps for whole collections on Ray: the job `heatmap` runs, on every node.

    \b
    INPUTS: folders, files, globs, or URIs pyarrow reads (s3://bucket/photos, gs://...).
    OUTPUT: a folder or URI. Outputs, manifest.jsonl and job.json are those of `heatmap`
    (see `midas-onnx heatmap --help`): a rerun skips inputs done with the same settings and
    refuses other settings (--force redoes all). Exit status 1 when any input failed, 2
    when the job cannot run (model, OUTPUT's settings, workers that cannot start).
    """
    require_extra("ray", "ray")
    from bulk import BulkSettings, run
    from runtime.errors import MidasOnnxError
    from runtime.session import missing_model_message

    model_path = default_model(Path(model) if model else None)
    if not model_path.is_file():
        _stop(missing_model_message(model_path))
    settings = BulkSettings(model=str(model_path), spec=spec, address=address, workers=workers,
                            threads_per_worker=threads_per_worker, chunk_size=chunk_size, force=force,
                            ship_bytes=ship_bytes, verbose=verbose)
    try:
        result = run(settings, list(inputs), output)
    except (MidasOnnxError, OSError) as exc:  # the job cannot run: one line, never a traceback
        _stop(str(exc) if isinstance(exc, MidasOnnxError) else f"{exc.filename or output}: {exc.strerror or exc}")
    for message in result.job.inputs.problems:
        click.echo(f"error: {message}", err=True)
    for error in result.summary.failures:
        click.echo(f"failed: {error}", err=True)  # every error names its input
    logs = sorted({f"{r.get('host', '')}:{r['log']}" for r in result.job.journal.rows.values()
                   if r.get("status") == "failed" and r.get("log")})
    log = f"; Ray's output: {result.log}" if result.log else ""
    log += f"; tracebacks: {', '.join(logs)}" if logs else ""
    click.echo(f"{result.summary.line()} on {len(result.nodes)} node(s); manifest: {result.job.manifest}{log}")
    if result.summary.interrupted:
        sys.exit(130)
    if result.summary.failed or result.job.inputs.problems:
        sys.exit(1)


def _stop(message: str) -> None:
    """The job cannot start: one line, exit status 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)
