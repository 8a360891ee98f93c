"""INT8 you can trust: a per-layer error report, accuracy-targeted fp32 fallback, blockwise
timing. Mechanics on small real exports; the figures that judge quality are the benchmark's
(on the trained-like proxy), not asserted here."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest

from quantize import PRESETS, quantize_model
from quantize.layers import role
from quantize.report import latencies
from runtime import DepthHeatmapper


def quantized_convs(path) -> set[str]:
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    return {n.name for n in model.graph.node if n.op_type == "Conv"
            and any(getattr(producers.get(i), "op_type", "") == "DequantizeLinear" for i in n.input[:2])}


def run(fixed_model, calib_dir, eval_dir, out, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(fixed_model, out, PRESETS["static"], calib_dir, eval_dir, threads=2, latency_runs=4,
                              **kwargs).report


@pytest.fixture(scope="module")
def with_layers(tmp_path_factory, fixed_model, calib_dir, eval_dir):
    out = tmp_path_factory.mktemp("diag") / "layers.int8.onnx"
    return out, run(fixed_model, calib_dir, eval_dir, out, report_layers=True, measure_layers=5)


def test_layer_report_names_and_ranks_every_quantized_conv(with_layers):
    out, report = with_layers
    table = report["layers"]
    rows = table["layers"]
    assert {r["name"] for r in rows} == quantized_convs(out) and len(rows) == 97
    assert [r["rank"] for r in rows] == list(range(1, 98))
    assert table["images"] == 4 and table["measured"] == 5
    measured = [r for r in rows if "delta1_gain_if_float" in r]
    assert len(measured) == 5 and rows[:5] == measured  # measured layers rank first, most harmful first
    gains = [r["delta1_gain_if_float"] for r in measured]
    assert gains == sorted(gains, reverse=True)
    assert all(np.isfinite(r["weight_sqnr_db"]) for r in rows)
    captured = [r["activation_sqnr_db"] for r in rows if r["activation_sqnr_db"] is not None]
    assert len(captured) >= 95 and all(np.isfinite(captured))  # all but a fused final conv
    roles = {r["role"].split(":")[0].split(" (")[0] for r in rows}
    assert roles == {"backbone stage 1", "backbone stage 2", "backbone stage 3", "backbone stage 4", "decoder", "head"}
    assert "layers        97 quantized convs" in __import__("quantize").describe(report)


def test_roles_from_node_names():
    assert role("/layer1/layer1.0/Conv_output_0") == "backbone stage 1 (stem)"
    assert role("/layer3/layer3.0/layer3.0.4/conv_dw/Conv") == "backbone stage 3 (depthwise)"
    assert role("/layer2_rn/Conv") == "decoder: reassemble 2"
    assert role("/refinenet1/resConfUnit2/conv1/Conv") == "decoder: refinenet 1"
    assert role("/output_conv/output_conv.4/Conv") == "head"


def test_fallback_is_deterministic_never_worse_and_recorded(tmp_path, fixed_model, calib_dir, eval_dir, with_layers):
    _, full = with_layers
    reports = [run(fixed_model, calib_dir, eval_dir, tmp_path / f"fb{i}.int8.onnx", target_delta=0.999,
                   measure_layers=5) for i in range(2)]
    first, second = (r["fallback"] for r in reports)
    assert first["layers"] == second["layers"] and first["reason"] == second["reason"]
    assert first["reason"].startswith(("target met", "stopped"))
    # never worse than full INT8 on the evaluation photos
    assert reports[0]["fidelity_vs_fp32"]["worst_delta1"] >= full["fidelity_vs_fp32"]["worst_delta1"] - 1e-9
    info = DepthHeatmapper(tmp_path / "fb0.int8.onnx").info
    assert json.loads(info.extra["fallback_layers"]) == first["layers"]
    assert info.extra["fallback_target_delta1"] == "0.999"
    assert quantized_convs(tmp_path / "fb0.int8.onnx").isdisjoint(first["layers"])  # they really are fp32


def test_quantize_report_timing_is_blockwise():
    """Runs come in blocks per model (warm-up, then timed runs), never alternating one by one."""
    calls: list[str] = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, *_):
            calls.append(self.name)

    lat = latencies({"fp32": Fake("fp32"), "int8": Fake("int8")}, [(32, 32)], runs=6, warmup=2, rounds=2)
    assert lat["32x32"]["int8"]["runs"] == 6
    blocks = [calls[0]]
    for name in calls[1:]:
        if name != blocks[-1]:
            blocks.append(name)
    assert blocks == ["fp32", "int8", "fp32", "int8"]  # 2 rounds of one block each
    assert calls.count("fp32") == calls.count("int8") == 2 * (2 + 3)
