"""CLI plumbing: version, command list, and the message naming a missing extra."""

from __future__ import annotations

import importlib.util

from click.testing import CliRunner

from midas_onnx import __version__
from midas_onnx.cli import COMMANDS, main


def test_version_and_commands():
    assert CliRunner().invoke(main, ["--version"]).output.strip() == f"midas-onnx, version {__version__}"
    listing = CliRunner().invoke(main, ["--help"]).output
    for name in ("export", "quantize", "heatmap", "bench", "serve", "bulk", "info"):
        assert name in COMMANDS and f"  {name} " in listing


def test_missing_extra_names_the_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    result = CliRunner().invoke(main, ["bulk", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "this command needs the 'ray' extra (ray not installed): pip install 'midas-onnx[ray]'" in result.output


def test_every_error_is_one_error_line(tmp_path):
    """Ours and click's alike: `error: ...` (usage errors add the usage and --help lines)."""
    ours = CliRunner().invoke(main, ["info", str(tmp_path / "absent.onnx")])
    assert ours.exit_code == 1
    assert ours.output == f"error: model file not found: {tmp_path / 'absent.onnx'}. Export one with `midas-onnx export`.\n"
    usage = CliRunner().invoke(main, ["heatmap"], prog_name="midas-onnx")
    assert usage.exit_code == 2
    assert usage.output.splitlines()[-1] == "error: Missing argument 'INPUTS...'."
    assert "Try 'midas-onnx heatmap --help' for help." in usage.output
    assert "Error:" not in ours.output + usage.output


def test_engine_choices_are_the_runtimes():
    """--engine's choices are written out in the CLI (so --help imports no onnxruntime): the
    same as the runtime's."""
    from midas_onnx.cli.common import ENGINES
    from runtime.model.engine_choice import ENGINES as RUNTIME_ENGINES

    assert ENGINES == RUNTIME_ENGINES
