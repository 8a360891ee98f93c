"""The docs' figures come from the results files by reference (benchmarks.report.figure)."""

from __future__ import annotations

import json

import pytest

from benchmarks import report


def test_a_row_is_picked_by_several_fields(tmp_path):
    """A family's rows repeat each variant at every input size: ``variant=...&size=...``
    picks the one wanted, and a reference that matches no row stops the build."""
    rows = [{"variant": v, "size": size, "median_ms": ms}
            for (v, size), ms in {("da-onnx-fp32", 518): 986.0, ("da-onnx-fp32", 364): 352.0,
                                  ("da-onnx-int8-static", 364): 243.0}.items()]
    (tmp_path / "cpu-da.json").write_text(json.dumps({"cpu": "X", "date": "2026-12-03", "command": "c",
                                                      "families": {"rows": rows}}))
    assert report.figure("cpu-da:families.rows.variant=da-onnx-fp32&size=364.median_ms", tmp_path) == "352.0"
    assert report.figure("cpu-da:families.rows.variant=da-onnx-fp32.median_ms:.0f", tmp_path) == "986"
    with pytest.raises(report.ReportError, match="no row"):
        report.figure("cpu-da:families.rows.variant=da-onnx-int8-static&size=518.median_ms", tmp_path)
    with pytest.raises(report.ReportError, match="field=value"):
        report.figure("cpu-da:families.rows.variant=da-onnx-fp32&size.median_ms", tmp_path)


def test_the_bench_kind_is_the_whole_bench_not_a_partial_one_of_the_same_day(tmp_path):
    """``bench:...`` (the docs' MiDaS figures) stays on the whole bench when a families-only
    run (``--models da``) of the same date sits beside it, whatever their names sort as."""
    machine = {"cpu": "X", "cores": 2, "isa": "avx2", "date": "2026-12-03"}
    (tmp_path / "x-vnni.json").write_text(json.dumps({"machine": machine, "command": "c", "bars": [],
                                                      "latency": {"2": {"onnx-fp32": {"median_ms": 69.3}}}}))
    (tmp_path / "x-vnni-da.json").write_text(json.dumps({"machine": machine, "command": "c", "bars": [],
                                                         "families": {"rows": []}}))
    assert report.figure("bench:latency.@all.onnx-fp32.median_ms", tmp_path) == "69.3"
    (tmp_path / "x-vnni-da-later.json").write_text(json.dumps({"machine": machine | {"date": "2026-12-24"},
                                                               "command": "c", "bars": [], "families": {"rows": []}}))
    assert report.figure("bench:latency.@all.onnx-fp32.median_ms", tmp_path) == "69.3"  # a later partial one
