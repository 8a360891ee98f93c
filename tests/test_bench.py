"""The benchmark script's --quick mode writes its table, raw figures and chart, with every
row the issue asks for (timings are the benchmark's business, not asserted here)."""

from __future__ import annotations

import json

from benchmarks import bench


def test_quick_benchmark_writes_results(tmp_path, fixed_model, dynamic_model, dynamic_int8, recipe_checkpoint):
    results = bench.main(["--quick", "--fp32", str(dynamic_model), "--int8", str(dynamic_int8.model_path),
                          "--fixed", str(fixed_model), "--int8-dynamic", str(tmp_path / "absent.onnx"),
                          "--no-openvino", "--checkpoint", str(recipe_checkpoint), "--out", str(tmp_path),
                          "--models", "midas"])
    stem = results["machine"]["slug"] + "-quick"
    md = (tmp_path / f"{stem}.md").read_text()
    raw = json.loads((tmp_path / f"{stem}.json").read_text())
    png = (tmp_path / f"{stem}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    names = [v["name"] for v in raw["variants"]]
    assert names == ["pytorch-eager", "pytorch-trace", "onnx-fp32", "onnx-fp32-fixed", "onnx-int8-static"]  # int8-dynamic absent
    for name in names:
        assert f"| {name} |" in md
    # PyTorch runs the recipe weights the default fp32 model was exported from: they agree
    assert raw["fidelity"]["pytorch-eager"]["delta1"] > 0.999
    assert 0 <= raw["fidelity"]["onnx-int8-static"]["delta1"] <= 1
    cold = raw["cold_start"]["onnx-int8-static"]
    assert cold["torch_loaded"] is False and 0 < cold["peak_rss_mb"] < 1000
    assert {b["bar"] for b in raw["bars"]} >= {
        "ONNX fp32 speed-up over PyTorch eager", "static INT8 speed-up over ONNX fp32",
        "dynamic-size fp32 latency vs fixed 256x256 fp32",
        "heatmap CLI vs inference-only throughput (640x480, static INT8)"}
    e2e = raw["end_to_end"]["640x480"]
    assert set(e2e) == {"onnx-fp32", "onnx-fp32-fixed", "onnx-int8-static"}
    assert e2e["onnx-int8-static"]["network_shape"] == "192x256" and e2e["onnx-fp32-fixed"]["network_shape"] == "256x256"
    # dynamic-size models (fp32 and static INT8) are also timed at a 640x480 photo's shape
    second = raw["latency_second_size"][str(bench.os.cpu_count())]
    assert set(second) == {"onnx-fp32", "onnx-int8-static"}
    assert "## Dynamic-size models at 192x256" in md
    # the roofline: the model's GFLOP from its graph, this machine's sgemm rate, shares of that floor
    rf = raw["roofline"]
    assert abs(rf["model_gflop_256"] - _torch_conv_gflop()) < 1e-6  # counted from the graph, checked in PyTorch
    shares = rf["threads"][str(bench.os.cpu_count())]["share_of_floor"]
    assert set(shares) == {"pytorch-eager", "pytorch-trace", "onnx-fp32", "onnx-fp32-fixed"}
    assert "## Roofline" in md
    # CPU flags in every results file
    assert results["machine"]["isa"] and f"CPU flags that decide INT8 speed: {results['machine']['isa']}" in md
    assert raw["machine"]["isa"] == results["machine"]["isa"]
    assert "## Bars" in md and results["machine"]["cpu"] in md
    # INT8 fidelity per integer path: this CPU's, and from a VNNI CPU the AVX2-only one too
    # (emulated); the default 7-bit-weight file computes the same integers on both
    paths = raw["int8_paths"]
    assert paths["layout"] == "u8s8-w7" and paths["this_cpu"]["path"] == results["machine"]["int8_path"]
    assert "## Static INT8 fidelity against fp32 per integer path" in md
    assert results["machine"]["slug"].endswith({"vnni": "-vnni", "avx2-u8s8": "-avx2"}[results["machine"]["int8_path"]])
    if results["machine"]["int8_path"] == "avx2-u8s8":
        assert paths["avx2_emulated"].startswith("not needed")
    else:
        assert paths["avx2_emulated"]["features"]["AVX512VNNI"] is False
        assert paths["avx2_emulated"]["max_diff_of_range_vs_this_cpu"] <= 1e-3
        assert next(b for b in raw["bars"] if b["bar"].startswith("static INT8 AbsRel, AVX2-only"))["met"] is True


def _torch_conv_gflop() -> float:
    """The same count done independently: forward hooks on every Conv2d of the PyTorch network."""
    import torch

    from export.model import MidasNetSmall

    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        total += 2 * output.numel() * module.weight[0].numel()  # per output value: Cin/groups x kh x kw MACs

    model = MidasNetSmall().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 256, 256))
    return total / 1e9
