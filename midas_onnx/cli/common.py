"""Helpers every command uses: friendly errors and the missing-extra message."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import click

DEFAULT_MODEL = Path("models") / "midas_small.onnx"


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
