"""``midas-onnx info``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import friendly_errors


def _int8_here(metadata: dict[str, str]) -> dict | None:
    """For a quantized file: its integer layout and what it means on this CPU's integer path
    (a file with 8-bit weights is less faithful on x86 CPUs without VNNI than where it was made)."""
    from runtime.model.cpu import PATH_TEXT, cpu_name, int8_layout, int8_path, layout_on_cpu

    if "quantization" not in metadata:
        return None
    try:
        layout = metadata.get("int8_layout") or int8_layout(json.loads(metadata["quantization"]))
    except (ValueError, AttributeError):
        return None
    return {"layout": layout, "cpu": f"{cpu_name()} ({PATH_TEXT[int8_path()]})", "meaning": layout_on_cpu(layout)}


@click.command("info")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--engine", type=click.Choice(["onnxruntime", "openvino", "auto"]), default="onnxruntime",
              show_default=True, help="Inference engine to open MODEL with; auto measures both (or reads its cache) "
                                      "and says which it would run.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads, for --engine auto's measurement.")
def command(model: Path, as_json: bool, engine: str, threads: int | None) -> None:
    """Show MODEL's midas-onnx metadata, inputs/outputs, file size and sha256."""
    from runtime.model.engine_choice import open_session
    from runtime.files import sha256_file
    from runtime.model.metadata import PREFIX

    with friendly_errors():
        session, choice = open_session(model, threads, engine)
        meta = session.get_modelmeta()
        props = dict(meta.custom_metadata_map)
        report = {
            "file": str(model),
            "size_bytes": model.stat().st_size,
            "sha256": sha256_file(model),
            "producer": meta.producer_name,
            "inputs": [{"name": i.name, "shape": i.shape, "type": i.type} for i in session.get_inputs()],
            "outputs": [{"name": o.name, "shape": o.shape, "type": o.type} for o in session.get_outputs()],
            "metadata": {k.removeprefix(PREFIX): v for k, v in sorted(props.items())},
            "midas_onnx_model": any(k.startswith(PREFIX) for k in props),
        }
        report["int8_on_this_cpu"] = _int8_here(report["metadata"])
        report["engine"] = choice.to_dict()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"file:      {report['file']}")
    click.echo(f"size:      {report['size_bytes'] / 1e6:.2f} MB ({report['size_bytes']:,} bytes)")
    click.echo(f"sha256:    {report['sha256']}")
    timings = ", ".join(f"{name} {ms:.1f} ms" for name, ms in report["engine"]["timings_ms"].items())
    click.echo(f"engine:    {report['engine']['engine']} ({report['engine']['reason']}{'; ' + timings if timings else ''})")
    for kind in ("inputs", "outputs"):
        for io in report[kind]:
            click.echo(f"{kind[:-1]:<10} {io['name']} {io['shape']} {io['type']}")
    if not report["midas_onnx_model"]:
        click.echo("metadata:  none from midas-onnx (not exported by this toolkit)")
    for key, value in report["metadata"].items():
        click.echo(f"  {key}: {value}")
    if report["int8_on_this_cpu"]:
        here = report["int8_on_this_cpu"]
        click.echo(f"int8 here: {here['layout']} on {here['cpu']}: {here['meaning']}")
