"""INT8 you can trust: a streamed per-layer error report, accuracy-targeted fp32 fallback
chosen on one split of the photos and reported on the other, one blockwise timer. Mechanics
on small real exports; the figures that judge quality are in tests/test_int8_proxy.py (the
trained-like proxy)."""

from __future__ import annotations

import json
import math
import tracemalloc
import warnings

import numpy as np
import onnx
import pytest

from quantize import PRESETS, quantize_model
from quantize.layers import activation_sqnr, keep_float, quantized_nodes, role
from quantize.photos import PhotoSet
from quantize.report import outputs, scores, timed
from runtime import DepthHeatmapper
from runtime.model.metadata import INPUT_NAME, ModelInfo
from runtime.model.preprocess import network_input
from runtime.model.session import create_session

from .conftest import write_crops


def quantized_conv_names(path) -> set[str]:
    return {n.name for n in quantized_nodes(onnx.load(str(path)))}


def run(model, calib_dir, eval_dir, out, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(model, out, PRESETS["static"], calib_dir, eval_dir, threads=2, latency_runs=4,
                              **kwargs).report


@pytest.fixture(scope="module")
def grouped_eval(tmp_path_factory, photo_set):
    """Evaluation crops in one sub-folder per source photo (rocket, camera, chelsea)."""
    root = tmp_path_factory.mktemp("grouped")
    for k, name in enumerate(("rocket", "camera", "chelsea")):
        write_crops(root / name, {name: photo_set[name]}, 2, 10 + k)
    return root


@pytest.fixture(scope="module")
def with_layers(tmp_path_factory, fixed_model, calib_dir, eval_dir):
    out = tmp_path_factory.mktemp("diag") / "layers.int8.onnx"
    return out, run(fixed_model, calib_dir, eval_dir, out, report_layers=True, measure_layers=5)


@pytest.fixture(scope="module")
def fallback(tmp_path_factory, fixed_model, calib_dir, grouped_eval):
    folder = tmp_path_factory.mktemp("fb")
    return folder, [run(fixed_model, calib_dir, grouped_eval, folder / f"fb{i}.int8.onnx", target_delta=0.999,
                        measure_layers=5) for i in range(2)]


def test_layer_report_names_ranks_and_measures_every_quantized_conv(with_layers, fixed_model, eval_dir):
    out, report = with_layers
    table = report["layers"]
    rows = table["layers"]
    assert {r["name"] for r in rows} == quantized_conv_names(out) and len(rows) == 97
    assert [r["rank"] for r in rows] == list(range(1, 98))
    assert table["images"] == 4 and table["measured"] == 5 and len(table["photos"]) == 4
    assert all(np.isfinite(r["weight_sqnr_db"]) and np.isfinite(r["activation_sqnr_db"]) for r in rows)
    roles = {r["role"].split(":")[0].split(" (")[0] for r in rows}
    assert roles == {"backbone stage 1", "backbone stage 2", "backbone stage 3", "backbone stage 4", "decoder", "head"}
    assert "layers        97 quantized layers" in __import__("quantize").describe(report)
    # The table's top gain is what that conv in fp32 really gives on these photos, computed
    # here from the written INT8 model and the fp32 model (the report's own temp files are gone).
    top = rows[0]
    info = ModelInfo(input_hw=(256, 256))
    xs = [network_input(p, info, "rgb") for p in sorted(eval_dir.glob("*.jpg"))]
    refs = outputs(create_session(fixed_model, threads=2), xs)
    int8 = onnx.load(str(out))
    float_proto = onnx.load(str(fixed_model))
    names = {n.name for n in float_proto.graph.node}
    assert top["name"] in names  # the exporter's names survive pre-processing for this check
    worst = [min(s[1] for s in scores(create_session(m.SerializeToString(), threads=2), xs, refs))
             for m in (int8, keep_float(int8, float_proto, [top["name"]]))]
    assert top["delta1_gain_if_float"] == pytest.approx(worst[1] - worst[0], abs=2e-3)


def test_streamed_sqnr_matches_onnxruntime_debugger(with_layers, fixed_model, eval_dir, tmp_path):
    """The streamed sums give onnxruntime's own qdq_loss_debug SQNR (which holds every
    photo's activations) for the convs whose output has a Q/DQ pair."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, compute_activation_error, create_activation_matching,
        modify_model_output_intermediate_tensors)

    from quantize.calibration import ImageCalibrationReader

    out, report = with_layers
    ours = {r["name"]: r["activation_sqnr_db"] for r in report["layers"]["layers"]}
    xs = [network_input(p, ModelInfo(input_hw=(256, 256)), "rgb") for p in sorted(eval_dir.glob("*.jpg"))]
    acts = []
    for name, path in (("f", fixed_model), ("q", out)):
        modify_model_output_intermediate_tensors(str(path), str(tmp_path / f"{name}.onnx"), op_types_for_saving=["Conv"])
        acts.append(collect_activations(str(tmp_path / f"{name}.onnx"), ImageCalibrationReader(xs)))
    theirs = compute_activation_error(create_activation_matching(acts[1], acts[0]))
    convs = {n.output[0]: n.name for n in quantized_nodes(onnx.load(str(out)))}
    compared = [(ours[convs[y]], e["xmodel_err"]) for y, e in theirs.items() if y in convs and "xmodel_err" in e]
    assert len(compared) >= 60  # the convs whose output has its own Q/DQ pair
    # within 0.2 dB: the debugger runs the QDQ graph unoptimized, ours as deployed
    np.testing.assert_allclose([a for a, _ in compared], [b for _, b in compared], atol=0.2)


def test_streamed_sqnr_memory_does_not_grow_with_photos(with_layers, fixed_model, photo_set):
    """Peak Python-visible memory for 8 photos stays that of 2: one photo at a time."""
    out, _ = with_layers
    float_proto, qdq_proto = onnx.load(str(fixed_model)), onnx.load(str(out))
    x = network_input(photo_set["astronaut"], ModelInfo(input_hw=(256, 256)), "rgb")
    peaks = []
    for n in (2, 8):
        photos = PhotoSet([x.copy() for _ in range(n)], [str(i) for i in range(n)], [str(i) for i in range(n)])
        tracemalloc.start()
        activation_sqnr(float_proto, qdq_proto, photos, threads=2)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[0] > 20e6  # one photo's conv outputs (both models) are measured at all
    assert peaks[1] < 1.3 * peaks[0], peaks


def test_keep_float_runs_exactly_the_named_convs_in_fp32(with_layers, fixed_model):
    """The fallback's model edit: the named convs read float inputs and weights, every other
    conv stays quantized, no dead Q/DQ is left, and the model still runs."""
    out, report = with_layers
    qdq, float_proto = onnx.load(str(out)), onnx.load(str(fixed_model))
    names = [r["name"] for r in report["layers"]["layers"][:3]]
    edited = keep_float(qdq, float_proto, names)
    assert {n.name for n in quantized_nodes(edited)} == quantized_conv_names(out) - set(names)
    used = {i for n in edited.graph.node for i in n.input} | {o.name for o in edited.graph.output}
    assert all(any(o in used for o in n.output) for n in edited.graph.node)
    x = network_input(np.zeros((64, 64, 3), np.uint8), ModelInfo(input_hw=(256, 256)), "rgb")
    assert np.isfinite(create_session(edited.SerializeToString(), threads=2).run(None, {INPUT_NAME: x})[0]).all()


def test_roles_from_node_names():
    assert role("/layer1/layer1.0/Conv_output_0") == "backbone stage 1 (stem)"
    assert role("/layer3/layer3.0/layer3.0.4/conv_dw/Conv") == "backbone stage 3 (depthwise)"
    assert role("/layer2_rn/Conv") == "decoder: reassemble 2"
    assert role("/refinenet1/resConfUnit2/conv1/Conv") == "decoder: refinenet 1"
    assert role("/output_conv/output_conv.4/Conv") == "head"


def test_fallback_is_chosen_on_one_split_and_reported_on_the_other(fallback):
    folder, (first, second) = fallback
    fb = first["fallback"]
    # deterministic: the same choice, reason and search figures on a second run
    assert fb["layers"] == second["fallback"]["layers"] and fb["reason"] == second["fallback"]["reason"]
    assert fb["steps"] == second["fallback"]["steps"]
    search = {p.split("/")[0] for p in fb["search_photos"]}
    reported = {p.split("/")[0] for p in first["fidelity_vs_fp32"]["photos"]}
    assert search and reported and search.isdisjoint(reported)  # by source photo, not by file
    assert search | reported == {"rocket", "camera", "chelsea"}
    assert set(first["layers"]["photos"]) == set(fb["search_photos"])
    assert fb["full_int8_on_report_photos"]["photos"] == first["fidelity_vs_fp32"]["photos"]
    assert first["fidelity_vs_fp32"]["photos_from"] == "held out from calibration and from the fallback search"
    info = DepthHeatmapper(folder / "fb0.int8.onnx").info
    assert json.loads(info.extra["fallback_layers"]) == fb["layers"]
    assert info.extra["fallback_target_delta1"] == "0.999"
    assert 0.5 <= fb["int8_work_kept"] <= 1 and fb["speed_rule"].startswith("counted work")
    # (that chosen layers really run in fp32 is checked on the proxy, where layers get chosen)


def test_fallback_reasons(tmp_path, fixed_model, calib_dir, grouped_eval):
    """An easy target is met with nothing kept in float; with no layer measured the reason
    says so (not that falling back stops paying)."""
    easy = run(fixed_model, calib_dir, grouped_eval, tmp_path / "easy.int8.onnx", target_delta=0.01, measure_layers=2)
    assert easy["fallback"]["reason"] == "target met" and easy["fallback"]["layers"] == []
    assert easy["fallback"]["steps"] == []
    blind = run(fixed_model, calib_dir, grouped_eval, tmp_path / "blind.int8.onnx", target_delta=0.999, measure_layers=0)
    assert blind["fallback"]["reason"].startswith("nothing to fall back on: no layer's depth impact was measured")
    assert blind["fallback"]["layers"] == [] and not blind["fallback"]["met"]


def test_fallback_needs_two_source_photos(tmp_path, fixed_model, calib_dir, photo_set):
    from quantize.calibration import CalibrationError

    one = write_crops(tmp_path / "one" / "rocket", {"rocket": photo_set["rocket"]}, 3, 5).parent
    with pytest.raises(CalibrationError, match="at least two source photos"):
        run(fixed_model, calib_dir, one, tmp_path / "x.int8.onnx", target_delta=0.9)


def test_split_by_source_keeps_crops_together():
    x = np.zeros((1, 3, 8, 8), np.float32)
    sources = ["b", "a", "c", "a", "b", "d"]
    photos = PhotoSet([x] * 6, [f"{s}{i}" for i, s in enumerate(sources)], sources)
    search, report = photos.split_by_source()
    assert search.sources == ["a", "c", "a"] and report.sources == ["b", "b", "d"]
    assert search.names == ["a1", "c2", "a3"]
    with pytest.raises(ValueError):
        PhotoSet([x], ["a"], ["a"]).split_by_source()


def test_one_timer_runs_in_blocks():
    """Runs come in blocks per runner (one discarded run, then timed ones), never alternating
    one by one; a slow runner gets fewer runs within its budget."""
    calls: list[str] = []

    def runner(name, sleep=0.0):
        def go(_):
            calls.append(name)
            if sleep:
                __import__("time").sleep(sleep)
        return go

    lat = timed({"fp32": runner("fp32"), "int8": runner("int8")}, np.zeros(1), runs=6, block=3, pause_s=0)
    assert lat["int8"]["runs"] == lat["fp32"]["runs"] == 6
    blocks = [calls[0]]
    for name in calls[1:]:
        if name != blocks[-1]:
            blocks.append(name)
    assert blocks == ["fp32", "int8", "fp32", "int8"]
    assert calls.count("fp32") == 2 * (1 + 3)
    slow = timed({"slow": runner("slow", 0.05)}, np.zeros(1), runs=50, pause_s=0, budget_s=0.3, min_runs=3)
    assert 3 <= slow["slow"]["runs"] <= 8 and math.isfinite(slow["slow"]["median_ms"])
