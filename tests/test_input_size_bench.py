"""benchmarks/input_size.py: the shape each --input-size gives a 640x480 photo, its latency,
and the pipeline's depth against the first size's on the held-out built-in photos."""

from __future__ import annotations

from .test_metric_outputs import da_file


def test_input_size_bench_shapes_and_output_change(tmp_path_factory):
    from benchmarks.input_size import main, output_change
    from runtime import DepthHeatmapper

    model = da_file(tmp_path_factory, "relative")
    row = main([str(model), "--sizes", "140,84", "--rounds", "1"])["files"][0]
    assert row["model"] == "da-v2-small" and row["precision"] == "fp32"
    assert row["shapes"] == {140: "140x182", 84: "84x112"}  # the short side reaches the size, multiples of 14
    assert set(row["latency_ms"]) == {140, 84} and all(ms > 0 for ms in row["latency_ms"].values())
    hm = DepthHeatmapper(model, threads=2, input_size=140)
    same = output_change({140: hm, 1: hm})[1]  # the reference's own depth again: no change at all
    assert same["mean_absrel"] == 0.0 and same["worst_delta1"] == 1.0 and same["images"] >= 4
    coarse = row["change_vs_first"][84]
    assert 0.0 < coarse["mean_absrel"] <= coarse["worst_absrel"] and coarse["worst_delta1"] < 1.0
