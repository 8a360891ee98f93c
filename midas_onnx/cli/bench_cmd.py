"""``midas-onnx bench``: the benchmark script in benchmarks/bench.py, from the CLI."""

from __future__ import annotations

import click

from .common import require_extra


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def command(ctx: click.Context) -> None:
    """Benchmark fp32 / INT8 / PyTorch side by side (options: `midas-onnx bench --help-bench`).

    Writes bench-results/<machine>.md, .json and .png under the current folder (--out DIR
    to choose another). Pass --quick for a CI-sized run.
    """
    require_extra("bench", "matplotlib", "skimage")
    from benchmarks import bench

    args = ["--help" if a == "--help-bench" else a for a in ctx.args]
    bench.main(args)
