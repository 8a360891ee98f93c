"""``midas-onnx models``."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the full descriptions as JSON.")
def command(as_json: bool) -> None:
    """List the models `export --model` builds: licence, size, input and output."""
    from runtime.model.model_description import MODELS, NOT_OFFERED

    if as_json:
        click.echo(json.dumps({"models": [json.loads(d.to_json()) for d in MODELS.values()],
                               "not_offered": NOT_OFFERED}, indent=2))
        return
    for d in MODELS.values():
        rule, out = d.input, d.output
        output = (f"metric depth in metres (0 to {out.max_depth:g})" if out.metric
                  else "relative inverse depth (larger is nearer)")
        click.echo(f"{d.id}: {d.title}")
        click.echo(f"  licence:    {d.licence}{'' if d.commercial_use else ' (non-commercial)'}")
        click.echo(f"  size:       {d.checkpoint.parameters / 1e6:.1f}M parameters, "
                   f"{d.checkpoint.parameters * 4 / 1e6:.0f} MB of fp32 weights")
        click.echo(f"  input:      {rule.resize.replace('_', ' ')} {rule.size}, multiples of {rule.multiple_of}")
        click.echo(f"  output:     {output}")
        click.echo(f"  weights:    {d.checkpoint.url}")
        pins = [f"revision {d.checkpoint.revision}" if d.checkpoint.revision else "",
                f"sha256 {d.checkpoint.sha256}" if d.checkpoint.sha256 else ""]
        click.echo(f"  pinned:     {', '.join(p for p in pins if p) or 'no'}"
                   f"{'' if d.checkpoint.sha256 else ' (no checksum recorded in this release: the file sha256 goes into each export)'}")
        if d.notes:
            click.echo(f"  notes:      {d.notes}")
    for name, why in NOT_OFFERED.items():
        click.echo(f"not offered: {name}: {why}")
