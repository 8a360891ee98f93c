"""Inference engines: OpenVINO beside onnxruntime behind one session interface, the same
numbers from either, and ``auto`` choosing by measurement with a cache. The golden checks
of both model families also run on every installed engine (the ``engine`` fixture)."""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from quantize import PRESETS, quantize_model
from quantize.report import compare
from runtime import DepthHeatmapper, ModelError
from runtime.model import engine_choice, openvino_session
from runtime.model.engine_choice import MARGIN, open_session, pick
from tests.proxy_model import proxy_model  # noqa: F401  (session fixture)

pytestmark = pytest.mark.skipif(not openvino_session.available(), reason="OpenVINO not installed (the openvino extra)")


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fp32_depth_is_the_same_on_both_engines_at_every_shape(dynamic_model, photo_set):
    """Landscape, portrait and square photos through the dynamic file: within 1e-4 of range."""
    ort, ov = (DepthHeatmapper(dynamic_model, threads=2, engine=e) for e in ("onnxruntime", "openvino"))
    assert ov.info == ort.info and ov.engine_choice.engine == "openvino"
    for photo in (photo_set["coffee"], photo_set["coffee"][:, :260], photo_set["astronaut"]):
        a, b = ort.predict(photo, "rgb").depth, ov.predict(photo, "rgb").depth
        assert np.abs(a - b).max() <= 1e-4 * np.ptp(a)


def test_int8_on_openvino_is_as_faithful_as_on_onnxruntime(proxy_model, calib_dir, eval_dir, photo_set, tmp_path):  # noqa: F811
    """The same static INT8 file of the trained-like proxy: δ<1.25 and AbsRel against fp32
    on photos it was not calibrated on, no worse on OpenVINO than on onnxruntime beyond noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = quantize_model(proxy_model, tmp_path / "p.int8.onnx", PRESETS["static"], calib_dir, eval_dir,
                              threads=2, latency_runs=1).model_path
    fp32 = DepthHeatmapper(proxy_model, threads=2)
    photos = [photo_set[k] for k in ("rocket", "camera", "coffee")]
    refs = [fp32.predict(p, "rgb").depth for p in photos]
    scores = {}
    for engine in ("onnxruntime", "openvino"):
        hm = DepthHeatmapper(int8, threads=2, engine=engine)
        s = [compare(hm.predict(p, "rgb").depth, r) for p, r in zip(photos, refs)]
        scores[engine] = (max(a for a, _ in s), min(d for _, d in s))
    assert scores["openvino"][0] <= scores["onnxruntime"][0] + 0.005, scores
    assert scores["openvino"][1] >= scores["onnxruntime"][1] - 0.002, scores
    assert scores["openvino"][1] >= 0.98, scores


def test_one_openvino_session_serves_threads_at_once(dynamic_model, photo_set):
    """OpenVINO's infer requests are not thread-safe; the session gives each thread its own."""
    ov = DepthHeatmapper(dynamic_model, threads=1, engine="openvino")
    crops = [photo_set["coffee"][:, : 300 + 60 * (i % 3)] for i in range(9)]
    alone = [ov.predict(c, "rgb").depth for c in crops]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda c: ov.predict(c, "rgb").depth, crops))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_a_one_thread_openvino_session_runs_one_call_per_cpu_at_once(dynamic_model):
    """``threads=1`` shared by ``heatmap``'s workers: one stream per CPU, each of one thread, as
    onnxruntime runs concurrent calls (on one stream they would queue, using one core)."""
    cpus = os.cpu_count()
    assert cpus >= 2, "needs two CPUs (CI's machines have them)"
    compiled = DepthHeatmapper(dynamic_model, threads=1, engine="openvino").session._compiled
    assert int(compiled.get_property("NUM_STREAMS")) == cpus
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == cpus
    alone = DepthHeatmapper(dynamic_model, threads=cpus, engine="openvino").session._compiled
    assert int(alone.get_property("NUM_STREAMS")) == 1


def test_auto_measures_once_then_reads_its_cache(dynamic_model, cache_home):
    first = DepthHeatmapper(dynamic_model, threads=2, engine="auto").engine_choice
    assert first.reason == "auto: measured at load" and set(first.timings_ms) == {"onnxruntime", "openvino"}
    assert first.engine == pick(first.timings_ms)
    cached = json.loads((cache_home / "midas-onnx" / "engines.json").read_text())
    assert [v["engine"] for v in cached.values()] == [first.engine]
    again = DepthHeatmapper(dynamic_model, threads=2, engine="auto").engine_choice
    assert again.reason == "auto: measured before on this CPU" and again.timings_ms == first.timings_ms
    other_threads = DepthHeatmapper(dynamic_model, threads=1, engine="auto").engine_choice
    assert other_threads.reason == "auto: measured at load"  # the thread count is part of the key


@pytest.mark.parametrize(("ov_ms", "want"), [(9.6, "onnxruntime"), (10 * (1 - MARGIN), "openvino"), (7.0, "openvino"),
                                             (12.0, "onnxruntime")])
def test_auto_takes_openvino_only_when_it_is_clearly_faster(ov_ms, want):
    """Within the margin onnxruntime stays: noise must never make ``auto`` slower than it."""
    assert pick({"onnxruntime": 10.0, "openvino": ov_ms}) == want


def test_auto_chooses_what_measure_says(dynamic_model, cache_home, monkeypatch):
    """The measured timings decide (a stand-in clock: OpenVINO twice as fast)."""
    monkeypatch.setattr(engine_choice, "measure", lambda sessions, hw: {"onnxruntime": 20.0, "openvino": 10.0})
    session, choice = open_session(dynamic_model, 2, "auto")
    assert choice.engine == "openvino" and isinstance(session, openvino_session.OpenVinoSession)


def test_auto_without_openvino_is_onnxruntime_at_no_cost(dynamic_model, cache_home, monkeypatch):
    monkeypatch.setattr(openvino_session, "available", lambda: False)
    monkeypatch.setattr(engine_choice, "measure", lambda *a: pytest.fail("nothing to measure"))
    hm = DepthHeatmapper(dynamic_model, threads=2, engine="auto")
    assert hm.engine_choice.engine == "onnxruntime" and hm.engine_choice.reason == "auto: OpenVINO is not installed"


def test_auto_works_where_its_cache_cannot_be_written(dynamic_model, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    hm = DepthHeatmapper(dynamic_model, threads=2, engine="auto")
    assert hm.engine_choice.reason == "auto: measured at load"


def test_engine_errors_are_one_line(dynamic_model, monkeypatch):
    with pytest.raises(ModelError, match=r"^engine must be one of onnxruntime, openvino, auto, got 'tensorrt'$"):
        DepthHeatmapper(dynamic_model, engine="tensorrt")

    def no_openvino():
        raise ModelError("the openvino engine needs OpenVINO: pip install 'midas-onnx[openvino]'")

    monkeypatch.setattr(openvino_session, "_openvino", no_openvino)
    with pytest.raises(ModelError, match=r"pip install 'midas-onnx\[openvino\]'"):
        DepthHeatmapper(dynamic_model, engine="openvino")


def test_info_shows_the_engine_auto_would_run(dynamic_model, cache_home):
    from click.testing import CliRunner

    from midas_onnx.cli import main

    out = CliRunner().invoke(main, ["info", str(dynamic_model), "--engine", "auto", "--threads", "2", "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)["engine"]
    assert shown["reason"] == "auto: measured at load" and shown["engine"] == pick(shown["timings_ms"])
    again = CliRunner().invoke(main, ["info", str(dynamic_model), "--engine", "auto", "--threads", "2"]).output
    assert f"engine:    {shown['engine']} (auto: measured before on this CPU; onnxruntime " in again
