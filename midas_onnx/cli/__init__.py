"""``midas-onnx`` command line: one small module per command, imported only when run.

Lazy loading keeps ``midas-onnx --version`` and ``--help`` fast and lets the runtime-only
install use ``heatmap``/``info`` without torch: ``export`` imports torch only when called.
"""

from __future__ import annotations

import importlib
import sys

import click

from midas_onnx import __version__

# command name -> (module under midas_onnx.cli, one-line help shown by --help)
COMMANDS = {
    "export": ("export_cmd", "Build a model from its checkpoint and write a verified ONNX model."),
    "models": ("models_cmd", "List the models export builds, with licence and size."),
    "quantize": ("quantize_cmd", "Write an INT8 model (static QDQ or dynamic) with a fidelity report."),
    "heatmap": ("heatmap_cmd", "Depth heatmaps for images, folders, globs and videos."),
    "bench": ("bench_cmd", "Benchmark model variants side by side."),
    "serve": ("serve_cmd", "Serve heatmaps over HTTP: upload page, API, jobs, metrics."),
    "bulk": ("bulk_cmd", "Heatmaps for whole collections on Ray: the heatmap job on every node."),
    "info": ("info_cmd", "Show a model's metadata, inputs/outputs, size and sha256."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
        return module.command

    def main(self, *args, **kwargs):
        """Every error, ours or click's, as one ``error: ...`` line (a usage error adds the
        usage line and the --help hint), exit status 1 (2 for usage errors)."""
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                click.echo(exc.ctx.get_usage(), err=True)
                click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="midas-onnx")
def main() -> None:
    """Monocular depth heatmaps (MiDaS small, Depth Anything V2 Small) with onnxruntime, no PyTorch needed at run time."""
