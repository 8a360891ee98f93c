"""One result -> the response asked for (PNG, JSON, depth file), and ``known_depths`` parsing.

``parse_points`` bounds what a query string can cost before any JSON is parsed: its length,
its nesting depth, each number's digits, and the number of points, each over the limit a
422 in the service's envelope (Python's json would otherwise recurse or overflow into a 500).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace

import numpy as np

from runtime import MidasOnnxError
from runtime.outputs import postprocess, render as outputs

from .errors import ApiError

# ?format= -> content type; depth16/npy/pfm/exr are depth files (runtime.outputs.depth_files).
FORMATS = {"png": "image/png", "json": "application/json", "depth16": "image/png", "npy": "application/x-npy",
           "pfm": "image/x-portable-floatmap", "exr": "image/x-exr"}
DEPTH_FORMATS = {"depth16": "png16", "npy": "npy", "pfm": "pfm", "exr": "exr"}
MAX_NESTING = 3  # [[x, y, d], ...] or [{"x":..}, ...]: two levels; one spare
MAX_NUMBER_CHARS = 32
DEFAULT_ALPHA = postprocess.DEFAULT_ALPHA  # the CLI's overlay weight


def choose_format(fmt: str | None, accept: str) -> str:
    if fmt is not None:
        return fmt
    return "json" if "application/json" in accept and "image/png" not in accept else "png"


def _bad(message: str) -> ApiError:
    return ApiError(422, "bad_known_depths", message)


def _nesting(text: str) -> int:
    """Deepest bracket nesting outside strings: one linear pass, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


_LONG_NUMBER = re.compile(rf"[-+.0-9eE]{{{MAX_NUMBER_CHARS + 1},}}")


def _float(text: str) -> float:
    """JSON's floats (its integers need no check once no number is long: 32 digits is finite)."""
    value = float(text)
    if not np.isfinite(value):
        raise _bad(f"known_depths: {text[:40]} is out of range")
    return value


def _constant(name: str) -> float:
    raise _bad(f"known_depths: {name} is not a number")


def parse_points(text: str | None, fmt: str, max_points: int):
    if text is None:
        return None
    from runtime.depth.metric import as_points

    if fmt in ("png", "depth16"):
        raise ApiError(422, "bad_format", "known_depths gives metres: ask for format=json, npy, pfm or exr")
    if _nesting(text) > MAX_NESTING:
        raise _bad(f"known_depths: nested deeper than {MAX_NESTING} levels; send a list of [x, y, depth_m]")
    long = _LONG_NUMBER.search(text)
    if long:  # one scan here, not a Python call per number
        raise _bad(f"known_depths: {len(long.group())} number characters in a row (a number of that length, or a "
                   f"string of digits and e's); a number may have at most {MAX_NUMBER_CHARS}")
    try:
        items = json.loads(text, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise _bad(f"known_depths must be a JSON list of [x, y, depth_m]: {exc}") from None
    if not isinstance(items, list):
        raise _bad("known_depths must be a JSON list of [x, y, depth_m]")
    if len(items) > max_points:
        raise _bad(f"known_depths: {len(items):,} points; at most {max_points:,} per request")
    try:
        return as_points(items)
    except MidasOnnxError as exc:
        raise _bad(str(exc)) from None


def model_entry(model) -> dict:
    """Which model answered, and what its depth is (``serve.models.ServedModel``)."""
    output = model.hm.info.description.output
    return {"name": model.name, "id": model.hm.info.description.id, "output": output.kind,
            "unit": output.unit or None}


def _overlay(result, alpha: float) -> bytes:
    """The overlay PNG at ``alpha``, as the CLI writes it."""
    return outputs.render(result, "overlay", alpha=alpha)


def summary(result, cmap: int, model) -> dict:
    """A JSON answer's (and a job entry's) body: size, which model and what its depth is, the
    depth's range in its unit, and the heatmap PNG as the CLI writes it."""
    result = replace(result, colormap=cmap)
    d = result.depth
    body = {"width": int(d.shape[1]), "height": int(d.shape[0]), "precision": model.hm.info.precision,
            "model": model_entry(model),
            "depth": {"min": float(d.min()), "max": float(d.max()), "mean": float(d.mean())},
            "heatmap_png_base64": base64.b64encode(outputs.render(result, "heatmap")).decode()}
    if (about := outputs.legend(result.output, cmap)) is not None:
        body["legend"] = about
    return body


def render(result, fmt: str, cmap: int, with_overlay: bool, alpha: float, model,
           points=None) -> tuple[bytes, str]:
    """The answer's body and content type (run in a render thread: serve.flow), encoded by
    the runtime's one output encoding (``runtime.outputs.render.render``, ``depth_files.encode_depth``),
    so a served answer has the bytes the CLI writes for the same image and options."""
    from runtime.outputs.depth_files import encode_depth
    from runtime.depth.metric import align, metric_depth, metric_summary

    result = replace(result, colormap=cmap)
    fit = None
    if points is not None:
        try:
            fit = align(result.depth, points, metric=result.output.metric)
        except MidasOnnxError as exc:
            raise _bad(str(exc)) from None
    if fmt in DEPTH_FORMATS:
        depth = result.depth if fit is None else metric_depth(result.depth, fit)
        try:
            return encode_depth(depth, DEPTH_FORMATS[fmt], result.output), FORMATS[fmt]
        except MidasOnnxError as exc:
            raise ApiError(422, "format_unavailable", str(exc)) from None
    if fmt == "json":
        body = summary(result, cmap, model)
        if with_overlay:
            body["overlay_png_base64"] = base64.b64encode(_overlay(result, alpha)).decode()
        if fit is not None:
            body["alignment"] = fit.to_dict()
            body["metric_depth_m"] = metric_summary(result.depth, fit)
        return json.dumps(body).encode(), FORMATS["json"]
    if with_overlay:
        return _overlay(result, alpha), FORMATS["png"]
    return outputs.render(result, "heatmap"), FORMATS["png"]
