"""``midas-onnx quantize``."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from .common import DEFAULT_MODEL, friendly_errors, require_extra


@click.command("quantize")
@click.argument("model", type=click.Path(path_type=Path), default=DEFAULT_MODEL)
@click.option("--int8", is_flag=True, required=True, help="Quantize to INT8 (the only precision offered).")
@click.option("--static/--dynamic", "static", default=True, show_default=True,
              help="Static QDQ calibrated on images (fast), or dynamic (no images needed; slower than fp32 on CPUs).")
@click.option("--calibration", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of calibration photos like the ones you will run on (static). Default: the "
                   "built-in photos (4 of them held out whole for the report). Every 5th is held out unless --eval.")
@click.option("--eval", "eval_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of held-out photos for the fidelity report. Files in one sub-folder count as one "
                   "source photo (crops of one photo): a split never puts them on both sides.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="Calibration method (static). Default: the preset's (percentile).")
@click.option("--weight-bits", type=click.Choice(["7", "8"]), default="7", show_default=True,
              help="7: the same depth on every x86 CPU. 8: a little closer to fp32 on CPUs with VNNI, much "
                   "further on CPUs without it (their int16 pair sums saturate).")
@click.option("--keep-float", default="", help="Layer roles kept in fp32, comma-separated: stem, head (all: a diagnostic).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Default: MODEL's name with .int8 (static) or .int8-dynamic (dynamic).")
@click.option("--report-layers", is_flag=True,
              help="Add a per-layer error table (SQNR and the depth error each conv adds) to the report.")
@click.option("--measure-layers", type=click.IntRange(min=0), default=None,
              help="With --report-layers/--target-delta: how many of the lowest-SQNR layers get their depth "
                   "impact measured (default 16; each costs one pass over the photos; 0 ranks by SQNR only).")
@click.option("--target-delta", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Keep the most harmful layers in fp32 until the worst search photo's delta<1.25 against "
                   "fp32 reaches this (e.g. 0.97). The evaluation photos are split by source photo: the search "
                   "uses one half, the report the other. Static only.")
@click.option("--input-size", type=click.IntRange(min=1), default=None,
              help="Dynamic models: calibrate, evaluate and time at this size of the model's resize rule (the "
                   "size you will run with heatmap --input-size). Default: the model's own.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for the latency report.")
@click.option("--force", is_flag=True, help="Overwrite the output model and report.")
def command(model: Path, int8: bool, static: bool, calibration: Path | None, eval_dir: Path | None,
            method: str | None, weight_bits: str, keep_float: str, output: Path | None, report_layers: bool, measure_layers: int | None,
            target_delta: float | None, input_size: int | None,
            threads: int | None, force: bool) -> None:
    """Write an INT8 version of MODEL and a fidelity/speed report against it (<out>.report.json).

    \b
    Static INT8 is the variant to use on CPUs; with no --calibration it calibrates on
    built-in photos (offline), but your own photos give the most faithful model:
      midas-onnx quantize --int8
      midas-onnx quantize --int8 --calibration photos/ models/midas_small.onnx
    Dynamic INT8 must be asked for; it is slower than fp32 for this model on CPUs:
      midas-onnx quantize --int8 --dynamic
    """
    require_extra("quantize", "onnx")
    from quantize import PRESETS, describe, quantize_model

    with friendly_errors():
        config = PRESETS["static" if static else "dynamic"]
        if method:
            if not static:
                raise click.UsageError("--method applies to static quantization only")
            config = config.with_(calibration=method)
        roles = tuple(r.strip() for r in keep_float.split(",") if r.strip())
        config = config.with_(keep_float=roles, reduce_range=weight_bits == "7")
        if output is None:
            output = model.with_name(model.name.removesuffix(".onnx") + (".int8.onnx" if static else ".int8-dynamic.onnx"))
        if static and calibration is None:
            click.echo("calibration: the built-in photos (scikit-image samples, public domain / CC0). For the "
                       "most faithful INT8 model, calibrate on photos like yours: --calibration DIR", err=True)
        with warnings.catch_warnings():
            # Shown as they happen (before the long calibration), one line each.
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = lambda message, *_a, **_k: click.echo(f"warning: {message}", err=True)
            if target_delta is not None and not static:
                raise click.UsageError("--target-delta applies to static quantization only")
            result = quantize_model(model, output, config, calibration, eval_dir, force=force, threads=threads,
                                    progress=True, report_layers=report_layers, target_delta=target_delta,
                                    input_size=input_size,
                                    **({} if measure_layers is None else {"measure_layers": measure_layers}))
    for message in result.report["unreadable_images"]:
        click.echo(f"warning: skipped {message}", err=True)
    click.echo(describe(result.report))
    if not static:
        slowest = min(result.report["speedup_vs_fp32"].values())
        click.echo(f"note: dynamic INT8 runs at {slowest:.2f}x the speed of fp32 here; static INT8 "
                   "(midas-onnx quantize --int8) is the fast one")
    click.echo(f"report: {result.report_path}")
