"""Depth Anything V2 Small (relative and metric) against upstream: the network, its
dynamic-size export, and the whole pipeline (pre-processing, network, resize back) on the
shared goldens, which upstream's own code computed with the deterministic recipe checkpoint
(``../shared/fixtures/da_v2_recipe.py``). Every export here goes through the CLI with
``--checkpoint`` in upstream's layout, as a user without internet would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from export.checkpoint import CheckpointError, build_model
from export.depth_anything import upstream_pos_embed
from midas_onnx.cli import main
from runtime import DepthHeatmapper, ModelError
from runtime.files import sha256_file
from runtime.model.model_description import DA_V2_SMALL, DA_V2_SMALL_METRIC_INDOOR, DA_V2_SMALL_METRIC_OUTDOOR, MODELS

from .conftest import FIXTURES, REPO

TARGET = 1e-4  # the bound: max error as a fraction of the output's range, every shape


def _recipe():
    if not (FIXTURES / "da_v2_recipe.py").is_file():
        pytest.skip(f"needs the shared Depth Anything V2 fixtures at {FIXTURES}")
    sys.path.insert(0, str(FIXTURES))
    import da_v2_recipe

    return da_v2_recipe


@pytest.fixture(scope="module")
def golden():
    return np.load(_recipe().GOLDEN)


@pytest.fixture(scope="module")
def da_checkpoint(tmp_path_factory):
    """The recipe as an upstream-layout ``.pth`` (all 239 keys, ``mask_token`` included)."""
    path = tmp_path_factory.mktemp("da_ckpt") / "depth_anything_v2_vits_recipe.pth"
    torch.save(_recipe().recipe_state_dict(), path)
    return path


def _cli_export(folder, checkpoint, model_id, *extra):
    out = folder / f"{model_id}.onnx"
    result = CliRunner().invoke(main, ["export", "--model", model_id, "--checkpoint", str(checkpoint), "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def da_model(tmp_path_factory, da_checkpoint):
    """``export --model da-v2-small --checkpoint`` (dynamic size, the default): path and CLI output."""
    return _cli_export(tmp_path_factory.mktemp("da"), da_checkpoint, "da-v2-small")


@pytest.fixture(scope="module")
def da_metric_indoor(tmp_path_factory, da_checkpoint):
    return _cli_export(tmp_path_factory.mktemp("da"), da_checkpoint, "da-v2-small-metric-indoor")


@pytest.fixture(scope="module")
def da_metric_outdoor_fixed(tmp_path_factory, da_checkpoint):
    """The outdoor metric head at one fixed size (the fixed-size export path, pos-embed folded)."""
    return _cli_export(tmp_path_factory.mktemp("da"), da_checkpoint, "da-v2-small-metric-outdoor", "--size", "364x518")


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.ptp(want))


def test_state_dict_layout_is_upstreams():
    """Every upstream key with its exact shape, nothing more (239 keys, 24,785,089 values),
    for the relative and the metric network alike."""
    from export.checkpoint import new_network

    keys = json.loads(_recipe().KEYS.read_text())
    for description in (DA_V2_SMALL, DA_V2_SMALL_METRIC_INDOOR):
        ours = new_network(description).state_dict()
        assert {e["key"]: e["shape"] for e in keys["keys"]} == {k: list(v.shape) for k, v in ours.items()}
        assert sum(v.numel() for v in ours.values()) == keys["num_parameters"] == description.checkpoint.parameters


@pytest.mark.parametrize("description, pair", [
    (DA_V2_SMALL, ("input_518", "output_518")),
    (DA_V2_SMALL, ("input_364x518", "output_364x518")),
    (DA_V2_SMALL_METRIC_INDOOR, ("input_364x518", "metric_output_364x518")),
])
def test_pytorch_network_matches_upstream(golden, da_checkpoint, description, pair):
    """timm backbone + the DPT head here, loaded strictly from upstream's layout: float32
    rounding is all that separates it from upstream (measured 2.1e-6 to 3.9e-6)."""
    model, sha = build_model(da_checkpoint, description)
    assert sha == sha256_file(da_checkpoint)
    with torch.no_grad():
        out = model(torch.from_numpy(golden[pair[0]])).numpy()
    assert _rel_err(out, golden[pair[1]]) < TARGET


def test_export_cli_writes_each_model_with_its_description(da_model, da_metric_indoor, da_metric_outdoor_fixed, da_checkpoint):
    """Each id exports from upstream's own file, verified against PyTorch, and the file
    carries its whole description (the runtime configures itself from it)."""
    for (path, output), model_id, size in [(da_model, "da-v2-small", "dynamic"),
                                           (da_metric_indoor, "da-v2-small-metric-indoor", "dynamic"),
                                           (da_metric_outdoor_fixed, "da-v2-small-metric-outdoor", "364x518")]:
        assert f"exporting {model_id} {size} model" in output and "verified" in output
        info = DepthHeatmapper(path, threads=1).info
        assert info.description == MODELS[model_id]
        assert info.input_size_text == size and info.checkpoint_sha256 == sha256_file(da_checkpoint)
        assert info.name == MODELS[model_id].name and info.extra["weights_licence"] == MODELS[model_id].licence
    assert "input 1x3x518x518" in da_model[1] and "input 2x3x252x252" in da_model[1]


@pytest.mark.parametrize("pair", [("input_518", "output_518"), ("input_364x518", "output_364x518")])
def test_dynamic_export_matches_upstream_network(da_model, golden, pair, engine):
    """One dynamic file at the 37x37 grid (pos-embed added unchanged) and at 26x37 (resampled),
    on each inference engine."""
    out = DepthHeatmapper(da_model[0], threads=2, engine=engine)._run(golden[pair[0]])
    assert _rel_err(out, golden[pair[1]]) < TARGET


def test_metric_exports_match_upstream_metric_head(da_metric_indoor, da_metric_outdoor_fixed, golden, engine):
    """Indoor (max 20 m) dynamic, outdoor (max 80 m) fixed at 364x518: the same Sigmoid head
    scaled by each model's max_depth, on each inference engine."""
    x, want = golden["input_364x518"], golden["metric_output_364x518"]
    indoor = DepthHeatmapper(da_metric_indoor[0], threads=2, engine=engine)._run(x)
    assert _rel_err(indoor, want) < TARGET
    outdoor = DepthHeatmapper(da_metric_outdoor_fixed[0], threads=2, engine=engine)._run(x)
    assert _rel_err(outdoor, want * (80.0 / 20.0)) < TARGET


def test_whole_pipeline_matches_upstream_infer_image(da_model, golden, engine):
    """Photo -> depth at the photo's size, as upstream's ``infer_image(raw_bgr, 518)``: three
    photos enlarged, one shrunk (measured 1.3e-5 to 2.3e-5 of the range), on each engine."""
    hm = DepthHeatmapper(da_model[0], threads=2, engine=engine)
    index = json.loads(str(golden["index"]))
    assert len(index["items"]) == 4
    for item in index["items"]:
        i = item["i"]
        result = hm.predict(golden[f"rgb_{i}"], order="rgb")
        assert hm.preprocess(golden[f"rgb_{i}"], "rgb").shape[2:] == tuple(item["net_input_hw"])
        assert _rel_err(result.depth, golden[f"depth_{i}"]) < TARGET, item["photo"]
        assert not result.output.metric


def test_resize_back_is_upstreams_bilinear_align_corners(golden):
    """The network output back at the photo's size as upstream's ``F.interpolate(bilinear,
    align_corners=True)``: equal to float32 rounding (align_corners=False would be 2e-2 off)."""
    from runtime.outputs.postprocess import resize_depth

    for i in range(4):
        want = golden[f"depth_{i}"]
        got = resize_depth(golden[f"net_output_{i}"][0], *want.shape, DA_V2_SMALL.output.resize)
        assert got.dtype == np.float32 and _rel_err(got, want) < 1e-6


@pytest.mark.parametrize("float_copy", ["whole photo", "row by row"])
def test_network_input_matches_upstream_image2tensor(da_model, golden, float_copy, monkeypatch):
    """Upstream normalises in float64 and casts once; so does the runtime: the network input
    equals upstream's to the bit, in RGB and in BGR order alike. Read row by row (what
    large photos get; here the shrunk fourth photo), one value in 10^5 is one float32 ulp
    off: the bicubic passes run in the other order."""
    from runtime.model import preprocess

    if float_copy == "row by row":
        monkeypatch.setattr(preprocess, "_FLOAT_COPY_BYTES", 0)
    hm = DepthHeatmapper(da_model[0], threads=1)
    for i in range(4):
        rgb, want = golden[f"rgb_{i}"], golden[f"net_input_{i}"]
        for x in (hm.preprocess(rgb, "rgb"), hm.preprocess(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr")):
            assert x.shape == want.shape and x.dtype == np.float32
            if float_copy == "whole photo" or i < 3:  # photos 0-2 are enlarged: copied whole either way
                np.testing.assert_array_equal(x, want)
            else:
                assert (np.abs(x - want) <= np.spacing(np.abs(want))).all()
                assert 0 < np.mean(x != want) < 1e-5


def _upstream_infer(model, rgb: np.ndarray, size: int) -> np.ndarray:
    """Upstream's ``infer_image`` at ``input_size=size``, written out (lower bound, multiples
    of 14, OpenCV bicubic on float64, ImageNet mean/std, bilinear align_corners back)."""
    h, w = rgb.shape[:2]
    scale = max(size / h, size / w)
    nh, nw = (max(int(round(scale * s / 14) * 14), size) for s in (h, w))
    img = cv2.resize(rgb / 255.0, (nw, nh), interpolation=cv2.INTER_CUBIC)
    img = (img - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None]).astype(np.float32))
    with torch.no_grad():
        depth = model(x)
    return F.interpolate(depth[:, None], (h, w), mode="bilinear", align_corners=True)[0, 0].numpy()


def test_runtime_input_size_follows_upstream_at_252(da_model, da_metric_outdoor_fixed, da_checkpoint, golden):
    """``input_size=252`` (a quarter of the tokens of 518): the runtime resizes as upstream's
    ``infer_image(raw, input_size=252)`` does, through the same dynamic file."""
    hm = DepthHeatmapper(da_model[0], threads=2, input_size=252)
    rgb = golden["rgb_0"]
    assert hm.preprocess(rgb, "rgb").shape == (1, 3, 252, 336)
    model, _ = build_model(da_checkpoint, DA_V2_SMALL)
    want = _upstream_infer(model, rgb, 252)
    assert _rel_err(hm.predict(rgb, order="rgb").depth, want) < TARGET
    with pytest.raises(ModelError, match="input size must be a positive multiple of 14, got 365"):
        DepthHeatmapper(da_model[0], input_size=365)
    with pytest.raises(ModelError, match="fixed 364x518 model: it cannot run at input size 252"):
        DepthHeatmapper(da_metric_outdoor_fixed[0], input_size=252)


def test_metric_result_is_in_metres(da_metric_indoor, golden):
    result = DepthHeatmapper(da_metric_indoor[0], threads=2, input_size=252).predict(golden["rgb_1"], order="rgb")
    assert result.output.metric and result.output.unit == "m" and result.output.max_depth == 20.0
    assert 0.0 < result.depth.min() and result.depth.max() < 20.0


def test_panorama_cost_is_bounded(da_model):
    """Upstream's lower bound would make a 20x2000 strip 518x51800 (3.8e4 patches); the
    long side is held at 3x518 instead, and the depth still comes back at the photo's size."""
    hm = DepthHeatmapper(da_model[0], threads=2)
    strip = np.random.default_rng(0).integers(0, 256, (20, 2000, 3), np.uint8)
    assert hm.preprocess(strip).shape == (1, 3, 14, 1554)
    depth = hm.predict(strip).depth
    assert depth.shape == (20, 2000) and np.isfinite(depth).all()


@pytest.mark.parametrize("grid", [(37, 37), (26, 37), (37, 49), (18, 28), (1, 1), (3, 74), (60, 45)])
def test_pos_embed_resampling_is_upstreams(grid):
    """The exportable resampling equals upstream's ``F.interpolate(scale_factor=(g + 0.1) / 37,
    mode="bicubic", antialias=False)`` at every grid, and is the identity at 37x37 (where
    upstream adds the table unchanged)."""
    pos = torch.randn(1, 1 + 37 * 37, 384, generator=torch.Generator().manual_seed(sum(grid)))
    gh, gw = grid
    ours = upstream_pos_embed(pos, 37, gh, gw, 0.1)
    if grid == (37, 37):
        assert torch.equal(ours, pos)
        return
    table = pos[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    want = F.interpolate(table, scale_factor=((gh + 0.1) / 37, (gw + 0.1) / 37), mode="bicubic", antialias=False)
    want = torch.cat([pos[:, :1], want.permute(0, 2, 3, 1).reshape(1, -1, 384)], dim=1)
    assert ours.shape == want.shape
    assert (ours - want).abs().max() < 1e-5 * pos.abs().max()


def test_network_refuses_sizes_that_are_not_multiples_of_14():
    from export.checkpoint import new_network

    with pytest.raises(ValueError, match=r"multiples of 14, got \(250, 252\)"):
        new_network(DA_V2_SMALL).eval()(torch.zeros(1, 3, 250, 252))


def test_wrong_checkpoint_is_refused_by_key(tmp_path, recipe_checkpoint, da_checkpoint):
    """A MiDaS file given for Depth Anything (and the reverse) names what is missing and extra."""
    with pytest.raises(CheckpointError, match=r"is not a Depth Anything V2 Small checkpoint: 239 missing keys "
                                              r"\(pretrained.cls_token, .*482 unexpected keys"):
        build_model(recipe_checkpoint, "da-v2-small")
    with pytest.raises(CheckpointError, match=r"is not a MiDaS v2.1 small checkpoint: 482 missing keys"):
        build_model(da_checkpoint, "midas-small")
    state = _recipe().recipe_state_dict()
    del state["pretrained.mask_token"]
    state["depth_head.projects.0.weight"] = torch.zeros(4, 384, 1, 1)
    torch.save(state, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match=r"1 missing keys \(pretrained.mask_token\); 1 keys of the wrong shape "
                                              r"\(depth_head.projects.0.weight \(4, 384, 1, 1\) != \(48, 384, 1, 1\)\)"):
        build_model(tmp_path / "damaged.pth", "da-v2-small-metric-outdoor")


def test_download_uses_the_hub_pin_and_checks_the_sha256(tmp_path, da_checkpoint, monkeypatch):
    """Online (not possible here) the file comes from ``hf_hub_download`` at the pinned
    revision; a file whose sha256 is not the pinned one is refused before it is loaded."""
    import huggingface_hub

    from export.download import official_checkpoint

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: (calls.append(kw), str(da_checkpoint))[1])
    good = replace(DA_V2_SMALL, checkpoint=replace(DA_V2_SMALL.checkpoint, revision="0" * 40,
                                                     sha256=sha256_file(da_checkpoint)))
    assert official_checkpoint(good) == da_checkpoint
    assert calls == [{"repo_id": "depth-anything/Depth-Anything-V2-Small", "filename": "depth_anything_v2_vits.pth",
                      "revision": "0" * 40}]
    bad = replace(good, checkpoint=replace(good.checkpoint, sha256="f" * 64))
    with pytest.raises(CheckpointError, match=f"has sha256 {sha256_file(da_checkpoint)}, not the official "
                                              f"depth_anything_v2_vits.pth's {'f' * 64}"):
        official_checkpoint(bad)


def test_offline_export_without_checkpoint_is_one_line(tmp_path):
    """No network and an empty cache: one line naming the file to fetch and --checkpoint."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "midas_onnx", "export", "--model", "da-v2-small-metric-indoor",
                          "-o", str(tmp_path / "m.onnx")], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not download the official Depth Anything V2 Small, metric indoor "
                           "(Hypersim, up to 20 m) weights from https://huggingface.co/depth-anything/")
    assert last.endswith("Offline? Download depth_anything_v2_metric_hypersim_vits.pth elsewhere and pass it "
                         "with --checkpoint PATH.")
    assert not (tmp_path / "m.onnx").exists()


def test_models_command_lists_licences_and_sizes():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for description in MODELS.values():
        assert f"{description.id}: {description.title}\n  licence:    {description.licence}" in result.output
        assert f"{description.checkpoint.parameters / 1e6:.1f}M parameters" in result.output
    assert "da-v2-small-metric-outdoor" in result.output and "metric depth in metres (0 to 80)" in result.output
    assert "not offered: Depth Anything V2 Base / Large / Giant" in result.output and "non-commercial" in result.output
    as_json = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert [m["id"] for m in as_json["models"]] == list(MODELS)
    assert as_json["models"][1]["input"]["resize"] == "lower_bound" and as_json["models"][0]["input"]["size"] == 256
