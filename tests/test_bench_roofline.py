"""The bench's roofline and INT8 profile: floors that cannot be beaten by more threads
measuring lower, the INT8 floor from MatMulInteger, and onnxruntime's profile per network part."""

from __future__ import annotations

import pytest

from benchmarks import bench


def test_more_threads_never_lower_the_floor(monkeypatch, fixed_model):
    """A 2-thread rate measured under the 1-thread one (a cold pool) is not a floor: the
    1-thread rate is kept, since 2 threads can always run as 1."""
    rates = {1: {"sgemm_gflops": 240.0, "int8_gops": 860.0}, 2: {"sgemm_gflops": 227.0, "int8_gops": 1700.0}}
    monkeypatch.setattr(bench, "matmul_rates", lambda threads: rates[threads])
    variants = [bench.Variant("onnx-fp32", "onnxruntime", fixed_model, "fp32"),
                bench.Variant("onnx-int8-static", "onnxruntime", fixed_model, "int8-static")]
    latency = {t: {"onnx-fp32": {"median_ms": 50.0}, "onnx-int8-static": {"median_ms": 20.0}} for t in ("1", "2")}
    rf = bench.roofline(variants, latency, (256, 256))
    one, two = rf["threads"]["1"], rf["threads"]["2"]
    assert two["sgemm_gflops"] == 240.0 and two["measured"]["sgemm_gflops"] == 227.0
    assert two["int8_gops"] == 1700.0
    assert two["floor_ms"] == pytest.approx(rf["model_gflop_256"] / 240.0 * 1000)
    assert two["int8_share_of_floor"]["onnx-int8-static"] == pytest.approx(two["int8_floor_ms"] / 20.0)
    assert set(one["share_of_floor"]) == {"onnx-fp32"} and set(one["int8_share_of_floor"]) == {"onnx-int8-static"}
    md = "\n".join(bench._roofline_lines({"roofline": rf, "latency": latency}))
    assert "| 2 | MatMulInteger u8s8 | 1700 |" in md and "| 2 | MatMul fp32 | 240 |" in md


def test_int8_matmul_rate_is_measured():
    """MatMulInteger (u8 x s8) really runs and gives a positive rate (one small size, one run)."""
    from onnx import TensorProto as T

    rate = bench._one_node_rate("MatMulInteger", (T.UINT8, T.INT8, T.INT32), threads=1, n=128, runs=1, warmup_s=0.0)
    assert rate > 0.1


def test_op_groups_from_node_names():
    assert bench._op_group("/layer3/layer3.0/layer3.0.4/conv_dw/Conv_token_4", "QLinearConv") == "depthwise conv"
    assert bench._op_group("/layer2/layer2.0/layer2.0.1/conv_pwl/Conv", "QLinearConv") == "pointwise conv (expand, project)"
    assert bench._op_group("/layer1/layer1.0/Conv", "QLinearConv") == "stem conv"
    assert bench._op_group("/refinenet2/resConfUnit1/conv1/Conv", "QLinearConv") == "decoder and head conv"
    assert bench._op_group("/refinenet2/Resize", "Resize") == "decoder resize"
    assert bench._op_group("image_QuantizeLinear", "QuantizeLinear") == "quantize, dequantize, layout"


def test_int8_profile_covers_every_part(static_int8, fixed_model):
    p = bench.op_profile(static_int8[0].model_path, fixed_model, threads=2, hw=(256, 256), runs=3)
    assert {"depthwise conv", "pointwise conv (expand, project)", "stem conv", "decoder and head conv",
            "decoder resize"} <= set(p["groups_ms"])
    assert all(ms > 0 for ms in p["groups_ms"].values()) and "QLinearConv" in p["op_types_ms"]
    assert sum(p["groups_gop"].values()) == pytest.approx(bench.model_gflop(fixed_model, (256, 256)))
    assert sum(p["groups_ms"].values()) == pytest.approx(sum(p["op_types_ms"].values()))


def test_fp32_floor_bounds_the_speed_up_over_eager(monkeypatch, fixed_model):
    """A family's fp32 floor is its multiply-adds at the measured MatMul rate, and the table
    says the most any fp32 graph of that arithmetic could gain over PyTorch eager here."""
    monkeypatch.setattr(bench, "matmul_rates", lambda threads: {"sgemm_gflops": 100.0, "int8_gops": 400.0})
    floor = bench.fp32_floor(fixed_model, 256, 2)
    assert floor["floor_ms"] == pytest.approx(bench.model_gflop(fixed_model, (256, 256)) / 100.0 * 1000, rel=1e-2)
    eager_ms = 2 * floor["floor_ms"]
    families = {"threads": 2, "rows": [{"model": "m", "family": "m", "variant": "m-pytorch-eager", "size": 256,
                                        "median_ms": eager_ms, "p95_ms": eager_ms, "runs": 1}],
                "fp32_floor": {"m": floor}}
    md = "\n".join(bench._family_lines(families))
    assert f"| {floor['floor_ms']} | {eager_ms:.1f} | 2.00x |" in md
