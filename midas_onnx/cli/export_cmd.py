"""``midas-onnx export``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from runtime.model.model_description import DEFAULT_MODEL_ID, MODELS

from .common import DEFAULT_MODEL, friendly_errors, require_extra


def default_output(model_id: str) -> Path:
    """``models/<id>.onnx`` (dashes as underscores): MiDaS small's is ``DEFAULT_MODEL``."""
    return DEFAULT_MODEL.with_name(model_id.replace("-", "_") + ".onnx")


@click.command("export")
@click.option("--model", "model_id", type=click.Choice(list(MODELS)), default=DEFAULT_MODEL_ID, show_default=True,
              help="Which model (`midas-onnx models` lists them with licence and size).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="The model's official checkpoint file, in upstream's own layout (offline). "
                   "Default: the official file, downloaded once into a cache and checked.")
@click.option("--hub", is_flag=True, help='midas-small only: build with torch.hub.load("intel-isl/MiDaS", "MiDaS_small") '
                                          "as upstream does (needs internet).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Where to write the ONNX file. Default: models/<model>.onnx ({DEFAULT_MODEL} for {DEFAULT_MODEL_ID}).")
@click.option("--size", default="dynamic", show_default=True,
              help="'dynamic' (any height and width in the model's multiples: upstream's aspect-keeping "
                   "pipeline) or a fixed HxW such as 256x256, for consumers that need one.")
@click.option("--input-size", type=int,
              help="Dynamic models: the size the resize aims at by default (the model's own otherwise, "
                   "e.g. 518 for Depth Anything V2; 364 or 252 cost far less on a CPU). `heatmap` and the "
                   "Python API can still choose another at run time.")
@click.option("--dynamic", is_flag=True, hidden=True, help="The default; kept so older scripts still run.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--no-slim", is_flag=True, help="Skip the onnxslim clean-up pass.")
def command(model_id: str, checkpoint: Path | None, hub: bool, output: Path | None, size: str, input_size: int | None,
            dynamic: bool, force: bool, no_slim: bool) -> None:
    """Build a model from its checkpoint, export it to ONNX, and verify it against PyTorch.

    The command fails (and writes nothing) if the exporter, onnxslim or onnx.checker fails,
    or if onnxruntime and PyTorch differ by more than 1e-4 relative on any checked input.
    """
    require_extra("export", "torch", "timm", "onnx", "onnxslim")
    from runtime.model.metadata import parse_size
    from runtime.model.model_description import describe

    logging.basicConfig(level=logging.WARNING)
    if hub and checkpoint:
        raise click.UsageError("--hub and --checkpoint are alternatives; give one")
    if hub and model_id != "midas-small":
        raise click.UsageError("--hub builds MiDaS small only (upstream's torch.hub entry)")
    output = output or default_output(model_id)
    with friendly_errors():
        description = describe(model_id)
        input_hw = parse_size(size, description.input.multiple_of)
        if dynamic and input_hw is not None:
            raise click.UsageError("--dynamic and --size HxW are alternatives; give one")
        if input_size is not None:
            if input_hw is not None:
                raise click.UsageError("--input-size is for dynamic models; a fixed one runs at --size")
            description = description.with_input_size(input_size)
        if output.exists() and not force:
            raise click.ClickException(f"{output} exists; pass --force to overwrite it")
        _export(description, checkpoint, hub, output, input_hw, not no_slim)


def _export(description, checkpoint: Path | None, hub: bool, output: Path, input_hw, slim: bool) -> None:
    """Build, export beside ``output``, verify, then rename into place."""
    from export import checkpoint as ckpt
    from export import onnx_export

    t0 = time.perf_counter()
    if hub:
        model, source_hash = ckpt.build_hub_model()
    else:
        click.echo(f"checkpoint: {checkpoint or 'official (downloaded once into a cache)'}")
        model, source_hash = ckpt.build_model(checkpoint, description)
    click.echo(f"exporting {description.id} {'dynamic' if input_hw is None else f'{input_hw[0]}x{input_hw[1]}'} "
               f"model (opset {onnx_export.OPSET}) ...")
    tmp_out = output.with_name(output.name + ".unverified")
    onnx_export.export_onnx(model, tmp_out, input_hw, source_hash, force=True, slim=slim, description=description)
    try:
        click.echo("verifying against PyTorch:")
        inputs = onnx_export.parity_inputs(input_hw, description=description)
        results = onnx_export.check_parity(tmp_out, model, inputs)
        for r in results:
            click.echo(f"  input {'x'.join(map(str, r.shape))}: max abs {r.max_abs:.2e}, max rel {r.max_rel:.2e}")
        tmp_out.replace(output)
    finally:
        tmp_out.unlink(missing_ok=True)
    size_mb = output.stat().st_size / 1e6
    click.echo(f"wrote {output} ({size_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s, verified "
               f"(worst relative error {max(r.max_rel for r in results):.2e} <= {onnx_export.MAX_REL_ERROR:g})")
