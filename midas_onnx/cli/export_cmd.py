"""``midas-onnx export``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from .common import DEFAULT_MODEL, friendly_errors, require_extra


@click.command("export")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Local midas_v21_small_256.pt (offline). Default: the official file via torch.hub's cache.")
@click.option("--hub", is_flag=True, help='Build with torch.hub.load("intel-isl/MiDaS", "MiDaS_small") as upstream does (needs internet).')
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_MODEL,
              show_default=True, help="Where to write the ONNX file.")
@click.option("--size", default="dynamic", show_default=True,
              help="'dynamic' (any height and width, multiples of 32: upstream's aspect-keeping pipeline) "
                   "or a fixed HxW such as 256x256, for consumers that need one.")
@click.option("--dynamic", is_flag=True, hidden=True, help="The default; kept so older scripts still run.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--no-slim", is_flag=True, help="Skip the onnxslim clean-up pass.")
def command(checkpoint: Path | None, hub: bool, output: Path, size: str, dynamic: bool, force: bool, no_slim: bool) -> None:
    """Build MiDaS_small, export it to ONNX, and verify it against PyTorch.

    The command fails (and writes nothing) if onnx.checker rejects the file or if
    onnxruntime and PyTorch differ by more than 1e-4 relative on any checked input.
    """
    require_extra("export", "torch", "timm", "onnx", "onnxslim")
    from export import checkpoint as ckpt
    from export import onnx_export
    from runtime.metadata import parse_size

    logging.basicConfig(level=logging.WARNING)
    if hub and checkpoint:
        raise click.UsageError("--hub and --checkpoint are alternatives; give one")
    with friendly_errors():
        input_hw = parse_size(size)
        if dynamic and input_hw is not None:
            raise click.UsageError("--dynamic and --size HxW are alternatives; give one")
        if output.exists() and not force:
            raise click.ClickException(f"{output} exists; pass --force to overwrite it")
        t0 = time.perf_counter()
        if hub:
            model, source_hash = ckpt.build_hub_model()
        else:
            click.echo(f"checkpoint: {checkpoint or 'official (torch.hub cache)'}")
            model, source_hash = ckpt.build_model(checkpoint)
        click.echo(f"exporting {'dynamic' if input_hw is None else f'{input_hw[0]}x{input_hw[1]}'} "
                   f"model (opset {onnx_export.OPSET}) ...")
        tmp_out = output.with_name(output.name + ".unverified")
        onnx_export.export_onnx(model, tmp_out, input_hw, source_hash, force=True, slim=not no_slim)
        try:
            click.echo("verifying against PyTorch:")
            results = onnx_export.check_parity(tmp_out, model, onnx_export.parity_inputs(input_hw))
            for r in results:
                click.echo(f"  input {'x'.join(map(str, r.shape))}: max abs {r.max_abs:.2e}, max rel {r.max_rel:.2e}")
            tmp_out.replace(output)
        finally:
            tmp_out.unlink(missing_ok=True)
        size_mb = output.stat().st_size / 1e6
        click.echo(f"wrote {output} ({size_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s, verified "
                   f"(worst relative error {max(r.max_rel for r in results):.2e} <= {onnx_export.MAX_REL_ERROR:g})")
