"""Helpers every command uses: friendly errors, the missing-extra message, and the options
that say how a model runs (``--input-size``, ``--engine``)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import click

DEFAULT_MODEL = Path("models") / "midas_small.onnx"  # what `export` writes: fp32, dynamic size
DEFAULT_INT8 = Path("models") / "midas_small.int8.onnx"  # what `quantize --int8` makes of it
MODEL_HELP = (f"Model file. Default: {DEFAULT_INT8} (made by `quantize --int8`) if it exists, "
              f"else {DEFAULT_MODEL} (made by `export`).")
# runtime.model.engine_choice.ENGINES, written out so that --help imports no onnxruntime (tests/test_cli.py
# checks they agree)
ENGINES = ("onnxruntime", "openvino", "auto")
RUN_OPTIONS = [
    click.option("--input-size", type=click.IntRange(min=1), default=None,
                 help="For a dynamic-size model: the size its resize rule aims at instead of its own (e.g. 364 or "
                      "252 for Depth Anything V2's 518: less work, coarser depth); a multiple of the model's "
                      "(14 for Depth Anything V2, 32 for MiDaS small). Recorded in job.json."),
    click.option("--engine", type=click.Choice(ENGINES), default="onnxruntime", show_default=True,
                 help="Inference engine: onnxruntime, openvino (the openvino extra), or auto (measured once per "
                      "file and CPU, then cached)."),
]


def run_options(command):
    """Decorate a command with ``--input-size`` and ``--engine`` (``DepthHeatmapper``'s
    ``input_size`` and ``engine``)."""
    for option in reversed(RUN_OPTIONS):
        command = option(command)
    return command


def default_model(model: Path | None) -> Path:
    """The model a command runs: the one given, else the default INT8 model (the fast one)
    when it has been made, else the fp32 export."""
    if model is not None:
        return model
    return DEFAULT_INT8 if DEFAULT_INT8.is_file() else DEFAULT_MODEL


def cpu_count() -> int:
    """CPUs this process may use: its affinity where the OS has one (Linux), else all."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return len(getaffinity(0)) if getaffinity is not None else os.cpu_count() or 1


def require_extra(extra: str, *modules: str) -> None:
    """Stop with the install command when an optional dependency is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(
            f"this command needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'midas-onnx[{extra}]'"
        )


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Our own errors become one clean ``Error: ...`` line and exit status 1."""
    from runtime.errors import MidasOnnxError

    try:
        yield
    except (MidasOnnxError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
