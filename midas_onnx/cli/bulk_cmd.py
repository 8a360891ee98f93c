"""``midas-onnx bulk``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import MODEL_HELP, default_model, require_extra, run_options
from .job_options import finish, job_files, output_options


@click.command("bulk")
@click.argument("inputs", nargs=-1, required=True)
@click.argument("output")
@click.option("--model", default=None, help=MODEL_HELP + " It must be readable on every node.")
@run_options
@click.option("--address", default=None,
              help="Ray cluster address (e.g. ray://head:10001 or auto). Default: a fresh embedded local Ray.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Ray workers (default: one per node).")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=None,
              help="Whole-image threads in each worker (default: its node's CPUs).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Inputs per Ray call (Ray's own cost is per call); fewer when a job is small.")
@output_options
@click.option("--ship-bytes", is_flag=True,
              help="Send local images' bytes through Ray (a cluster whose nodes cannot read INPUTS' paths); "
                   "videos are not sent: nodes read them from their paths.")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Seconds a worker may go without progress (an input done, a video frame) before it counts as "
                   "hung: it is restarted and its inputs run again.")
@click.option("--verbose", is_flag=True, help="Show Ray's own logs and tracebacks.")
def command(inputs: tuple[str, ...], output: str, model: str | None, input_size: int | None, engine: str,
            address: str | None, workers: int | None, threads_per_worker: int | None, chunk_size: int, spec,
            force: bool, ship_bytes: bool, stall_timeout: float, verbose: bool) -> None:
    """Depth heatmaps for whole collections on Ray: the job `heatmap` runs, on every node.

    \b
    INPUTS: folders, files, globs, or URIs pyarrow reads (s3://bucket/photos, gs://...).
    OUTPUT: a folder or URI. Outputs, manifest.jsonl and job.json are those of `heatmap`
    (see `midas-onnx heatmap --help`): a rerun skips inputs done with the same settings and
    refuses other settings, model or input size (--force redoes all); one job per OUTPUT at a
    time. Every worker runs the model with the same --input-size and --engine. Exit status 1
    when any input failed, 2 when the job cannot run (model, OUTPUT's settings or lock,
    workers that cannot start), 130 after Ctrl-C (the inputs running finish first).
    """
    require_extra("ray", "ray")
    from bulk import BulkSettings, run
    from runtime.errors import MidasOnnxError
    from runtime.model.session import missing_model_message

    model_path = default_model(Path(model) if model else None)
    if not model_path.is_file():
        _stop(missing_model_message(model_path))
    settings = BulkSettings(model=str(model_path), spec=spec, address=address, workers=workers,
                            threads_per_worker=threads_per_worker, chunk_size=chunk_size, force=force,
                            ship_bytes=ship_bytes, verbose=verbose, stall_timeout=stall_timeout,
                            input_size=input_size, engine=engine)
    try:
        result = run(settings, list(inputs), output)
    except (MidasOnnxError, OSError) as exc:  # the job cannot run: one line, never a traceback
        _stop(str(exc) if isinstance(exc, MidasOnnxError) else f"{exc.filename or output}: {exc.strerror or exc}")
    summary = result.summary
    for message in result.job.problems:
        click.echo(f"error: {message}", err=True)
    for error in summary.failures:
        click.echo(f"failed: {error}", err=True)  # every error names its input
    if summary.failed > len(summary.failures):
        click.echo(f"failed: {summary.failed - len(summary.failures)} more: see the manifest", err=True)
    log = f"; Ray's output: {result.log}" if result.log else ""
    log += f"; tracebacks: {', '.join(result.tracebacks)}" if result.tracebacks else ""
    click.echo(f"{summary.line()} on {len(result.nodes)} node(s); {job_files(result.job)}{log}")
    finish(summary, result.job)


def _stop(message: str) -> None:
    """The job cannot start: one line, exit status 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)
