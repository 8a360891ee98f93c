"""``midas-onnx heatmap``: images, folders, globs and videos to depth heatmaps."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import MODEL_HELP, cpu_count, default_model, friendly_errors, run_options
from .job_options import finish, job_files, output_options, progress, traceback_log


@click.command("heatmap")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", default=None,
              help="Folder for the results (created if needed), or a URI pyarrow writes (s3://bucket/depth).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help=MODEL_HELP)
@run_options
@output_options
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Images in flight, each through the whole pipeline (default: one per CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads per image (default: 1 with several workers; all cores with one).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Refuse larger images (default 100,000,000).")
@click.option("--size", default=None, help="Live input '-': the raw bgr24 frames' size, WxH (e.g. 640x480).")
@click.option("--stdout", "to_stdout", is_flag=True, help="Live input: raw bgr24 heatmap frames to stdout, for a pipe.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Live input: stop after N frames.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Live input: stop after this many seconds.")
def command(inputs: tuple[str, ...], outdir: str | None, model: Path | None, input_size: int | None, engine: str,
            spec, force: bool, workers: int | None, threads: int | None, max_pixels: int | None, size: str | None,
            to_stdout: bool, max_frames: int | None, duration: float | None) -> None:
    """Write a depth heatmap for every image in INPUTS (files, folders, globs) and every video.

    \b
    Output names cannot collide: each input's path relative to the common folder of all
    inputs is mirrored under OUTPUT, keeping the full file name with its extension:
      photos/a.jpg -> OUTPUT/a.jpg.heatmap.png   (+ a.jpg.depth.png, a.jpg.overlay.png)
      photos/x/a.png -> OUTPUT/x/a.png.heatmap.png
      clip.mp4 -> OUTPUT/clip.mp4.heatmap.mp4    (frames streamed, never all in memory)
    OUTPUT/manifest.jsonl gets a row per input (done / kept / failed, outputs, error) and
    OUTPUT/job.json the settings: a rerun skips inputs done with the same settings and
    refuses other settings, other inputs' root or another model or input size (--force
    redoes all). A metric model's depth files and point clouds hold metres and its colours
    span its fixed range (job.json's legend). Files
    that were in OUTPUT before are kept, never overwritten without --force. One job per
    OUTPUT at a time. A corrupt, empty or oversized file is reported by name; the exit
    status is then 1. Files inside OUTPUT are never inputs. Ctrl-C stops taking inputs,
    lets the ones running finish, and exits 130; a rerun resumes.

    \b
    Live inputs (one at a time): camera:N, a stream URL (rtsp://, http:// MJPEG, ...), or -
    for raw bgr24 frames on stdin (--size WxH, as ffmpeg -f rawvideo writes them). Heatmap
    frames go to stdout (--stdout, raw bgr24) and/or a Matroska video in OUTPUT (playable
    even if the recording is killed; an earlier one is kept unless --force); when inference
    falls behind, stale frames are dropped, never queued. Ctrl-C, --max-frames or --duration
    stop it with a summary (frames in, processed, dropped, latency).
      ffmpeg -i in.mp4 -f rawvideo -pix_fmt bgr24 - | midas-onnx heatmap - --size 640x480 \\
        --stdout | ffmpeg -f rawvideo -pix_fmt bgr24 -s 640x480 -i - out.mp4
    """
    from runtime import DepthHeatmapper
    from runtime.inputs import images
    from runtime.engine import Job, LocalRunner
    from runtime.engine.live import is_live

    if any(is_live(i) for i in inputs):
        _live(inputs, outdir, model, spec, threads, size, to_stdout, max_frames, duration, force,
              {"input_size": input_size, "engine": engine})
        return
    if outdir is None:
        raise click.UsageError("missing option '-o' / '--output'")
    with friendly_errors():
        model = default_model(model)
        workers = workers or cpu_count()
        if threads is None and workers > 1:
            threads = 1
        hm = DepthHeatmapper(model, threads=threads, colormap=spec.colormap, max_pixels=max_pixels or images.MAX_PIXELS,
                             input_size=input_size, engine=engine)
        job = Job.prepare(list(inputs), outdir, str(model), spec, force=force, command="midas-onnx heatmap",
                          description=hm.info.description)
    with job:
        for message in job.problems:
            click.echo(f"error: {message}", err=True)
        click.echo(f"model: {model} ({_model_line(hm)}); "
                   f"{workers} worker{'s' * (workers > 1)} x {threads or 'all'} thread{'s' * (threads != 1)}", err=True)
        with traceback_log("heatmap") as log, progress(len(job.todo)) as on_row, friendly_errors():
            summary = job.run(LocalRunner(hm, spec, job.store, job.digest, workers), on_row)
    tracebacks = f"; tracebacks: {log()}" if log() else ""
    click.echo(f"{summary.line()} -> {outdir}; {job_files(job)}{tracebacks}")
    finish(summary, job)


def _model_line(hm) -> str:
    """What runs: ``da-v2-small-metric-indoor (metres, 0-20 m), fp32, input dynamic (size 252), onnxruntime``."""
    info = hm.info
    out = info.description.output
    kind = f"metres, 0-{out.max_depth:g} m" if out.metric else "relative"
    size = f"dynamic (size {info.description.input.size})" if info.dynamic else info.input_size_text
    return f"{info.description.id} ({kind}), {info.precision}, input {size}, {hm.engine_choice.engine}"


def _live(inputs, outdir, model, spec, threads, size, to_stdout, max_frames, duration, force, run: dict) -> None:
    """One live input: all cores on each frame (latency, not throughput, is what counts)."""
    from runtime import DepthHeatmapper
    from runtime.engine.live import run_live_job

    if len(inputs) != 1:
        raise click.UsageError("a live input (camera:N, a stream URL or -) is run alone")
    with friendly_errors():
        hm = DepthHeatmapper(default_model(model), threads=threads, colormap=spec.colormap, **run)
        if outdir is not None:
            outdir = Path(outdir)
            outdir.mkdir(parents=True, exist_ok=True)
        summary = run_live_job(hm, inputs[0], spec, size=size, stdout=sys.stdout.buffer if to_stdout else None,
                               outdir=outdir, max_frames=max_frames, duration=duration, force=force)
    click.echo(summary.text(), err=True)
    if not summary.ok:
        sys.exit(1)
