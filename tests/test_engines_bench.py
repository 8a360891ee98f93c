"""benchmarks/engines.py: both engines timed on the same file, ``auto`` measured afresh, and
``heatmap`` against the inference-only rate, with the bars judged from that run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openvino")


def test_engines_bench_times_both_engines_and_judges_auto(dynamic_model, tmp_path, monkeypatch):
    from benchmarks import engines

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never the user's engine cache
    out = tmp_path / "engines.json"
    result = engines.main([str(dynamic_model), "--shapes", "64x96", "--rounds", "2", "--photos", "3",
                           "--json", str(out)])
    row = json.loads(out.read_text())["files"][0]
    assert row == result["files"][0]
    assert set(row["latency_ms"]["64x96"]) == {"onnxruntime", "openvino"}
    assert all(ms > 0 for ms in row["latency_ms"]["64x96"].values())
    assert row["auto"]["engine"] in ("onnxruntime", "openvino") and row["auto"]["reason"] == "auto: measured at load"
    assert row["auto_latency_ms"]["64x96"] == row["latency_ms"]["64x96"][row["auto"]["engine"]]
    for engine in ("onnxruntime", "openvino"):
        h = row["heatmap"][engine]
        assert h["heatmap_images_per_s"] > 0 and h["ratio"] == h["heatmap_images_per_s"] / h["inference_per_s"]
    assert not (tmp_path / "cache" / "midas-onnx" / "engines.json").exists()  # auto measured in its own cache


def test_the_bars_fail_a_slower_auto_and_a_slow_heatmap():
    from benchmarks.engines import bars

    row = {"latency_ms": {"1x1": {"onnxruntime": 10.0, "openvino": 9.0}}, "auto_latency_ms": {"1x1": 10.5},
           "heatmap": {"onnxruntime": {"ratio": 0.84}, "openvino": {"ratio": 0.9}}}
    assert bars(row) == {"1x1 auto <= onnxruntime": False, "1x1 auto <= fastest": False,
                         "heatmap/inference onnxruntime": False, "heatmap/inference openvino": True}
