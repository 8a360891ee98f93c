"""The benchmark script's --quick mode writes its table, raw figures and chart (timings are
the benchmark's business, not asserted here)."""

from __future__ import annotations

import json

from benchmarks import bench


def test_quick_benchmark_writes_results(tmp_path, fixed_model, dynamic_model, static_int8, random_checkpoint):
    int8 = static_int8[0].model_path
    results = bench.main(["--quick", "--fp32", str(fixed_model), "--int8", str(int8), "--dynamic", str(dynamic_model),
                          "--int8-dynamic", str(tmp_path / "absent.onnx"), "--no-openvino",
                          "--checkpoint", str(random_checkpoint), "--out", str(tmp_path)])
    stem = results["machine"]["slug"] + "-quick"
    md = (tmp_path / f"{stem}.md").read_text()
    raw = json.loads((tmp_path / f"{stem}.json").read_text())
    png = (tmp_path / f"{stem}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    names = [v["name"] for v in raw["variants"]]
    assert names == ["pytorch-eager", "pytorch-trace", "onnx-fp32", "onnx-fp32-dynamic", "onnx-int8-static"]  # int8-dynamic absent
    for name in names:
        assert f"| {name} |" in md
        lat = raw["latency"][str(bench.os.cpu_count())][name]
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p95_ms"]
    # same weights everywhere: PyTorch and ONNX fp32 agree, INT8 is compared too
    assert raw["fidelity"]["pytorch-eager"]["delta1"] > 0.999
    assert 0 <= raw["fidelity"]["onnx-int8-static"]["delta1"] <= 1
    cold = raw["cold_start"]["onnx-int8-static"]
    assert cold["torch_loaded"] is False and 0 < cold["peak_rss_mb"] < 1000
    assert {b["bar"] for b in raw["bars"]} >= {"ONNX fp32 speed-up over PyTorch eager", "static INT8 speed-up over ONNX fp32"}
    assert set(raw["end_to_end"]["640x480"]) == {"onnx-fp32", "onnx-fp32-dynamic", "onnx-int8-static"}
    second = raw["latency_second_size"][str(bench.os.cpu_count())]
    assert list(second) == ["onnx-fp32-dynamic"] and second["onnx-fp32-dynamic"]["median_ms"] > 0
    assert "## Dynamic models at 192x256" in md
    assert "## Bars" in md and results["machine"]["cpu"] in md
