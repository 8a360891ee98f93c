"""A real server holding two Depth Anything V2 files, a relative one and a metric one
(``--model NAME=FILE`` twice, ``--input-size`` and ``--engine`` for both): each request picks
its model with ``model=``; the metric model's answers are the bytes the CLI writes for the
same photo (heatmap and overlay coloured over its fixed range of metres with the legend
chunk, the 16-bit depth in metres on the fixed scale), ``known_depths`` fits one scale for it,
and /readyz and /metrics list both. The files are the session's one export of the recipe
checkpoint (tests/test_metric_outputs.py's ``da_file``), run at input size 140 to stay fast.
The picking rules, one budget for all models and the refusals are unit-tested with stubs
(tests/test_serve_units.py)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from runtime.model.model_description import DA_V2_SMALL, DA_V2_SMALL_METRIC_INDOOR

from .test_engine import cli
from .test_metric_outputs import SIZE, da_file, png_text
from .test_serve import running_server


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """(relative file, metric file), both Depth Anything V2 Small exports."""
    return da_file(tmp_path_factory, "relative"), da_file(tmp_path_factory)


@pytest.fixture(scope="module")
def server(two_models):
    relative, metric = two_models
    with running_server(f"relative={relative}", "--model", f"metric={metric}", "--input-size", SIZE,
                        "--engine", "onnxruntime", "--workers", "1", "--quiet") as base:
        yield base


@pytest.fixture(scope="module")
def photo(tmp_path_factory, photo_set):
    import cv2

    path = tmp_path_factory.mktemp("photo") / "coffee.jpg"
    cv2.imwrite(str(path), cv2.resize(photo_set["coffee"][:, :, ::-1], (160, 120)))
    return path


def post(base: str, query: str, data: bytes) -> httpx.Response:
    r = httpx.post(f"{base}/v1/depth?{query}", content=data, headers={"content-type": "image/jpeg"}, timeout=120)
    assert r.status_code == 200, r.text
    return r


def test_readyz_lists_each_model_with_its_engine_precision_and_input_size(server):
    ready = httpx.get(server + "/readyz").json()
    models = {m["name"]: m for m in ready["models"]}
    assert list(models) == ["relative", "metric"] and ready["default_model"] == "relative"
    assert models["relative"]["id"] == DA_V2_SMALL.id and models["relative"]["output"] == "relative_inverse_depth"
    metric = models["metric"]
    assert metric["id"] == DA_V2_SMALL_METRIC_INDOOR.id and (metric["output"], metric["unit"]) == ("metric_depth", "m")
    for m in models.values():
        assert m["engine"] == "onnxruntime" and m["precision"] == "fp32" and m["resize_to"] == int(SIZE), m
    text = httpx.get(server + "/metrics").text
    for name, m in models.items():
        assert f'model="{name}"' in text and f'id="{m["id"]}"' in text


def test_metric_answers_are_the_bytes_the_cli_writes(server, two_models, photo, tmp_path):
    """Heatmap, overlay and 16-bit depth of the metric model: byte for byte the CLI's files
    (the legend and depth text chunks included); the relative model's differ."""
    out = tmp_path / "cli"
    r = cli("heatmap", photo, "-o", out, "--model", two_models[1], "--input-size", SIZE, "--engine", "onnxruntime",
            "--overlay", "--save-depth", "png16")
    assert r.exit_code == 0, r.output
    data = photo.read_bytes()
    served = {kind: post(server, f"model=metric&{query}", data).content for kind, query in
              (("heatmap", "format=png"), ("overlay", "format=png&overlay=true"), ("depth", "format=depth16"))}
    for kind, body in served.items():
        assert body == (out / f"coffee.jpg.{kind}.png").read_bytes(), kind
    assert json.loads(png_text(out / "coffee.jpg.heatmap.png")["midas-onnx:legend"])["level_0_m"] == 20.0
    relative = post(server, "format=png", data).content  # the default: the first model
    assert relative != served["heatmap"]


def test_json_names_the_model_and_known_depths_fit_one_scale_for_a_metric_model(server, photo):
    data = photo.read_bytes()
    plain = post(server, "model=metric&format=npy", data).content
    own = np.load(__import__("io").BytesIO(plain))
    h, w = own.shape
    spots = [(w // 5, h // 5), (w // 2, h // 2), (4 * w // 5, h // 3), (w // 3, 4 * h // 5)]
    points = [[x, y, round(1.5 * float(own[y, x]), 6)] for x, y in spots]
    answer = post(server, "model=metric&format=json&known_depths=" + json.dumps(points), data).json()
    assert answer["model"] == {"name": "metric", "id": DA_V2_SMALL_METRIC_INDOOR.id, "output": "metric_depth",
                               "unit": "m"}
    assert answer["legend"]["unit"] == "m" and answer["legend"]["level_0_m"] == 20.0
    fit = answer["alignment"]
    assert fit["fitted_in"] == "metres" and fit["shift"] == 0.0 and abs(fit["scale"] - 1.5) < 1e-4
    relative = post(server, "format=json", data).json()
    assert relative["model"]["output"] == "relative_inverse_depth" and "legend" not in relative
