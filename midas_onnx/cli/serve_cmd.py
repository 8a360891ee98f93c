"""``midas-onnx serve``: one flag per ``serve.ServeSettings`` field (``--x-y`` for the field
``x_y``), built from the fields themselves, so every setting has its flag and its
environment variable (``MIDAS_ONNX_X_Y``) and pydantic is the one parser of both: click
only reads a flag's text as its type, the settings check its range. ``--engine`` and
``--input-size`` are the options every command that runs a model has (``common.run_options``);
given only by their default, they leave the environment's value in force."""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path

import click
from click.core import ParameterSource

from .common import MODEL_HELP, default_model, require_extra, run_options

try:
    from serve.settings import ServeSettings, SettingsError
except ImportError:  # the serve extra is missing: the command says so when run
    ServeSettings = None  # type: ignore[assignment, misc]


def _base(annotation):
    """The field's value type without ``| None`` and ``Annotated``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def _option(name: str, field) -> click.Option | None:
    flag = ServeSettings.flag_name(name)
    if flag is None or (field.json_schema_extra or {}).get("run_option"):
        return None  # environment only, or one of common.run_options
    kind = _base(field.annotation)
    default = "" if field.is_required() or field.default_factory or field.default is None else f" [{field.default}]"
    help_text = f"{field.description + MODEL_HELP.removeprefix('Model file.') if name == 'model' else field.description}{default} Env: {ServeSettings.env_name(name)}."
    if kind is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}"], default=None, help=help_text)
    if typing.get_origin(kind) is tuple:
        return click.Option([flag, name], multiple=True, default=None, help=help_text)
    if typing.get_origin(kind) is typing.Literal:
        return click.Option([flag, name], type=click.Choice(typing.get_args(kind)), default=None, help=help_text)
    types_ = {Path: click.Path(path_type=Path), int: click.INT, float: click.FLOAT, str: click.STRING}
    return click.Option([flag, name], type=types_[kind], default=None, help=help_text)


def given_flags(context: click.Context, flags: dict) -> dict:
    """The flags the user gave; None for the rest (an option left at its default, such as
    ``--engine``'s, must not hide the environment's value)."""
    return {k: (None if v == () or context.get_parameter_source(k) is ParameterSource.DEFAULT else v)
            for k, v in flags.items()}


def _run(**flags) -> None:
    """Serve depth heatmaps over HTTP, with an upload page at / and the API under /v1."""
    require_extra("serve", "fastapi", "uvicorn", "multipart", "prometheus_client", "pydantic_settings")
    flags = given_flags(click.get_current_context(), flags)
    if flags.get("model") is None and ServeSettings.env_name("model") not in os.environ:
        flags["model"] = (str(default_model(None)),)
    try:
        settings = ServeSettings.load(**flags)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.ray:
        require_extra("ray", "ray")
    from serve.settings import apply_opencv_limit

    apply_opencv_limit(settings)  # before anything below imports cv2
    from runtime.model.session import missing_model_message
    from serve.access import bind_refusal
    from serve.lifecycle import prepare_process

    try:
        refusal = bind_refusal(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if refusal:
        raise click.ClickException(refusal)
    for path in settings.models.values():
        if not path.is_file():
            raise click.ClickException(missing_model_message(path))
    prepare_process()
    if settings.ray:
        from serve.ray_deploy import run_on_ray

        run_on_ray(settings)
        return
    from serve.app import create_app, run_uvicorn

    run_uvicorn(create_app(settings), settings)


if ServeSettings is None:
    command = click.Command("serve", callback=lambda: require_extra("serve", "pydantic_settings"),
                            help=_run.__doc__)
else:
    command = click.command("serve", help=_run.__doc__, params=[
        option for name, field in ServeSettings.model_fields.items() if (option := _option(name, field))])(
        run_options(_run))
