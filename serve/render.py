"""One result -> the response asked for (PNG, JSON, depth file), and ``known_depths`` parsing.

``parse_points`` bounds what a query string can cost before any JSON is parsed: its length,
its nesting depth, each number's digits, and the number of points, each over the limit a
422 in the service's envelope (Python's json would otherwise recurse or overflow into a 500).
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np

from runtime import MidasOnnxError
from runtime.outputs import PNG_PARAMS, encode_heatmap, encode_png

from .errors import ApiError

# ?format= -> content type; depth16/npy/pfm/exr are depth files (runtime.depth_files).
FORMATS = {"png": "image/png", "json": "application/json", "depth16": "image/png", "npy": "application/x-npy",
           "pfm": "image/x-portable-floatmap", "exr": "image/x-exr"}
DEPTH_FORMATS = {"depth16": "png16", "npy": "npy", "pfm": "pfm", "exr": "exr"}
MAX_NESTING = 3  # [[x, y, d], ...] or [{"x":..}, ...]: two levels; one spare
MAX_NUMBER_CHARS = 32


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
    from runtime.metric import as_points

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


def _heatmap(result, cmap: int, with_overlay: bool, alpha: float) -> np.ndarray:
    return result.overlay(alpha, cmap) if with_overlay else result.colorized(cmap)


def summary(result, cmap: int, precision: str) -> dict:
    d = result.depth
    return {"width": int(d.shape[1]), "height": int(d.shape[0]), "precision": precision,
            "depth": {"min": float(d.min()), "max": float(d.max()), "mean": float(d.mean())},
            "heatmap_png_base64": base64.b64encode(encode_heatmap(d, cmap)).decode()}


def render(result, fmt: str, cmap: int, with_overlay: bool, alpha: float, precision: str,
           points=None) -> tuple[bytes, str]:
    """The answer's body and content type (run in a render thread: serve.flow)."""
    from runtime.depth_files import encode_depth
    from runtime.metric import align, metric_depth, metric_summary

    fit = None
    if points is not None:
        try:
            fit = align(result.depth, points)
        except MidasOnnxError as exc:
            raise _bad(str(exc)) from None
    if fmt in DEPTH_FORMATS:
        depth = result.depth if fit is None else metric_depth(result.depth, fit)
        try:
            return encode_depth(depth, DEPTH_FORMATS[fmt]), FORMATS[fmt]
        except MidasOnnxError as exc:
            raise ApiError(422, "format_unavailable", str(exc)) from None
    if fmt == "json":
        body = summary(result, cmap, precision)
        if with_overlay:
            body["overlay_png_base64"] = base64.b64encode(encode_png(_heatmap(result, cmap, True, alpha))).decode()
        if fit is not None:
            body["alignment"] = fit.to_dict()
            body["metric_depth_m"] = metric_summary(result.depth, fit)
        return json.dumps(body).encode(), FORMATS["json"]
    if not with_overlay:  # the shared indexed-PNG encoder: no full-size BGR heatmap is made
        return encode_heatmap(result.depth, cmap), FORMATS["png"]
    return encode_png(_heatmap(result, cmap, True, alpha), PNG_PARAMS["overlay"]), FORMATS["png"]
