"""Helpers every command uses: friendly errors and the missing-extra message."""

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
