"""Static INT8 of a ViT, judged where it means something: the trained-like Depth Anything V2
Small stand-in (tests/da_proxy.py, NOT Depth Anything; its outputs look like depth, so INT8
error is meaningful, which the random recipe cannot show).

The default `quantize --int8` of a Depth Anything file quantizes the matrix work (MatMul,
Conv, ConvTranspose) and leaves LayerNorm, Softmax, GELU, the adds and resizes in float, as
the model's description says; on photos it was not calibrated on it must keep δ<1.25 and
AbsRel against fp32 within the bars below, on this CPU and on an x86 CPU without VNNI
(emulated: benchmarks/emulated_cpu.py), and the per-layer report and `--target-delta` work
on this graph. Everything runs at a small input size (``SIZE``) so CI stays fast.
"""

from __future__ import annotations

import platform
import warnings

import numpy as np
import onnx
import pytest

from benchmarks.emulated_cpu import emulator, run_emulated
from quantize import PRESETS, builtin_photos, describe, quantize_model
from quantize.layers import quantized_nodes
from quantize.report import compare, outputs, summary
from runtime.heatmapper import read_model_info
from runtime.model.metadata import ModelInfo
from runtime.model.preprocess import network_input
from runtime.model.session import create_session
from tests.da_proxy import SIZE, da_proxy_model  # noqa: F401  (session fixture)

# Never fed a DequantizeLinear: they read the float residual stream and the float bias adds.
# (Softmax, the adds and resizes run in float too, but some read the dequantized output of an
# INT8 MatMul or conv: onnxruntime's QDQ quantizes those outputs.)
FLOAT_INPUT_OPS = {"LayerNormalization", "Erf", "Gelu"}


def quantize(model, out, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(model, out, PRESETS["static"], threads=2, latency_runs=2, input_size=SIZE,
                              force=True, **kwargs).report


@pytest.fixture(scope="module")
def da_int8(da_proxy_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("da_int8") / "da_proxy.int8.onnx"
    return out, quantize(da_proxy_model, out, report_layers=True, measure_layers=2)


def _held_out(model, size=SIZE) -> list[np.ndarray]:
    """One crop of each built-in held-out photo, at the model's rule for ``size``."""
    info = read_model_info(create_session(model, threads=1), model, size)
    return [network_input(crop, info, "rgb") for name, crop in builtin_photos.load()
            if builtin_photos.source(name) in builtin_photos.HELD_OUT and name.endswith("_0")]


def test_the_stand_in_is_trained_like(da_proxy_model):
    """Smooth, positive depth that follows the MiDaS stand-in (the teacher) on photos it never
    saw, and that holds still under sensor noise: the random recipe network fails each."""
    import cv2
    import torch

    import sys

    from export.model import MidasNetSmall
    from tests.da_proxy import FIXTURES

    sys.path.insert(0, str(FIXTURES))
    from trained_proxy import proxy_state_dict

    teacher = MidasNetSmall()
    teacher.load_state_dict(proxy_state_dict())
    teacher.eval()
    session = create_session(da_proxy_model, threads=2)
    info = read_model_info(session, da_proxy_model, SIZE)
    crops = [crop for name, crop in builtin_photos.load()
             if builtin_photos.source(name) in builtin_photos.HELD_OUT and name.endswith("_0")]
    noise = np.random.default_rng(0)
    for crop in crops:
        x = network_input(crop, info, "rgb")
        depth = session.run(None, {"image": x})[0][0]
        with torch.no_grad():  # the teacher at its own rule, its depth resized to the stand-in's
            ref = teacher(torch.from_numpy(network_input(crop, ModelInfo(input_hw=None), "rgb"))).numpy()[0]
        ref = cv2.resize(ref, depth.shape[::-1], interpolation=cv2.INTER_LINEAR)
        assert depth.min() > 0, "a depth map, strictly positive"
        assert np.corrcoef(depth.ravel(), ref.ravel())[0, 1] > 0.5
        assert _roughness(depth) < 3 * _roughness(ref) + 0.005  # as smooth as the teacher's, give or take
        noisy = np.clip(crop.astype(np.float64) + noise.normal(0, 2, crop.shape), 0, 255).astype(np.uint8)
        moved = session.run(None, {"image": network_input(noisy, info, "rgb")})[0][0]
        assert compare(moved, depth)[1] > 0.99  # sensor noise moves almost no pixel past 1.25x


def _roughness(depth: np.ndarray) -> float:
    """Mean absolute second difference down the rows, relative to the mean: 0 for a ramp."""
    return float(np.abs(np.diff(depth, 2, axis=0)).mean() / depth.mean())


def test_matrix_work_is_int8_and_the_rest_float(da_int8):
    out, report = da_int8
    model = onnx.load(str(out))
    quantized = quantized_nodes(model)
    ops = {n.op_type for n in quantized}
    assert ops == {"MatMul", "Conv", "ConvTranspose"}, ops
    # the qkv and output projections and both MLP layers of the 12 blocks; the two activation
    # products of attention (scores, x values) stay float, as the description says
    assert sum(n.op_type == "MatMul" for n in quantized) == 12 * 4
    assert not any("/attn/MatMul" in n.name for n in quantized)
    assert sum("/attn/MatMul" in name for name in report["kept_float_nodes"]) == 12 * 2
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    fed = [(n.op_type, n.name) for n in model.graph.node if n.op_type in FLOAT_INPUT_OPS
           and any(producers.get(i) == "DequantizeLinear" for i in n.input)]
    assert not fed, fed[:5]
    assert {"LayerNormalization", "Softmax", "Erf"} <= {n.op_type for n in model.graph.node}
    assert report["input_size"] == SIZE and list(report["latency_ms"]) == [f"{SIZE}x{SIZE}", f"{SIZE}x{SIZE * 4 // 3}"]


def test_default_int8_is_faithful_on_photos_it_was_not_calibrated_on(da_int8):
    f = da_int8[1]["fidelity_vs_fp32"]
    held = {builtin_photos.source(name) for name in f["photos"]}
    assert held == set(builtin_photos.HELD_OUT) and held.isdisjoint(da_int8[1]["calibration_photos"])
    assert f["mean_delta1"] >= 0.98 and f["worst_delta1"] >= 0.95, f
    assert f["mean_absrel"] <= 0.04, f


def test_layer_report_ranks_the_vit_layers(da_int8):
    out, report = da_int8
    table = report["layers"]
    rows = table["layers"]
    assert {r["name"] for r in rows} == {n.name for n in quantized_nodes(onnx.load(str(out)))}
    roles = {r["role"] for r in rows}
    assert "backbone block 11: MLP fc2" in roles and "backbone block 0: attention qkv" in roles
    assert "other" not in roles and not any("attention scores" in role for role in roles)
    assert sum("delta1_gain_if_float" in r for r in rows) == 2
    assert all(np.isfinite(r["weight_sqnr_db"]) for r in rows)  # every quantized product has weights
    assert "quantized layers" in describe(report) and "nandB" not in describe(report)


def test_target_delta_works_on_the_vit(da_proxy_model, tmp_path):
    out = tmp_path / "fallback.int8.onnx"
    report = quantize(da_proxy_model, out, target_delta=0.9999, measure_layers=3)
    fb = report["fallback"]
    assert fb["steps"] or fb["met"], fb
    assert fb["speed_rule"].startswith(f"counted work: share of the multiply-adds at {SIZE}x{SIZE}")
    written = {n.name for n in quantized_nodes(onnx.load(str(out)))}
    assert written.isdisjoint(fb["layers"]) and 0.5 <= fb["int8_work_kept"] <= 1


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU's integer path")
def test_default_int8_computes_the_same_depth_on_a_cpu_without_vnni(da_proxy_model, da_int8):
    """7-bit weights (the default layout): the AVX2-only path gives this CPU's depth, up to float rounding."""
    assert emulator(), "install Debian's qemu-user (bash .ci/run does): this test emulates an AVX2-only CPU"
    out, report = da_int8
    assert report["int8_layout"]["layout"] == "u8s8-w7"
    xs = _held_out(da_proxy_model)
    refs = outputs(create_session(da_proxy_model, threads=2), xs)
    here = outputs(create_session(out, threads=2), xs)
    there, features = run_emulated(out, xs)
    assert features["AVX512VNNI"] is False and features["AVX2"] is True
    # Attention's two products run in float, whose last bits differ between the AVX-512 and
    # AVX2 kernels; a value that lands on a rounding boundary of the next QuantizeLinear then
    # moves one step, so pixels may differ by a few steps (measured: under 3% of the range),
    # never the depth: delta and AbsRel below are the bar.
    for a, b, r in zip(here, there, refs):
        assert float(np.abs(a - b).max()) <= 0.05 * float(r.max() - r.min())
    s_here, s_there = (summary([compare(p, r) for p, r in zip(preds, refs)]) for preds in (here, there))
    assert abs(s_here["worst_delta1"] - s_there["worst_delta1"]) <= 0.005
    assert abs(s_here["mean_absrel"] - s_there["mean_absrel"]) <= 0.005


def test_a_file_with_another_rule_is_quantized_by_this_releases_rule(da_proxy_model, tmp_path):
    """A Depth Anything file whose description carries an empty rule (as files exported before
    attention's activation products were kept float do) is quantized by this release's rule
    for the same model, which the INT8 file's description then records; a model this release
    does not know keeps its own rule."""
    import dataclasses
    import json

    from runtime.model.model_description import DA_V2_SMALL, QuantRule, quantization_rule

    model = onnx.load(str(da_proxy_model))
    prop = next(p for p in model.metadata_props if p.key == "midas_onnx.description")
    description = json.loads(prop.value)
    description["quantization"]["float_nodes"] = []
    prop.value = json.dumps(description, sort_keys=True)
    onnx.save(model, str(tmp_path / "other_rule.onnx"))
    report = quantize(tmp_path / "other_rule.onnx", tmp_path / "other_rule.int8.onnx")
    assert sum("/attn/MatMul" in name for name in report["kept_float_nodes"]) == 12 * 2
    out = tmp_path / "other_rule.int8.onnx"
    written = read_model_info(create_session(out, threads=1), out).description
    assert written.quantization.float_nodes == ("/attn/MatMul",) and written.input.size == DA_V2_SMALL.input.size
    unknown = dataclasses.replace(DA_V2_SMALL, id="someone-elses-vit", quantization=QuantRule())
    assert quantization_rule(unknown) == unknown.quantization
