"""INT8 quantization of real exported models: files, metadata, reports, bad inputs, bars."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from midas_onnx.cli import main
from quantize import PRESETS, QuantConfig, quantize_model
from quantize.calibration import CalibrationError
from runtime import DepthHeatmapper, ModelError, ModelInfo
from runtime.files import sha256_file
from runtime.session import create_session

from .conftest import write_foreign_onnx


@pytest.fixture(scope="module")
def static_result(static_int8):
    return static_int8[0]


def test_few_calibration_images_warn(static_int8):
    assert any("calibrating on 9 images; use at least 32" in w for w in static_int8[1])


def test_static_int8_model_and_report(static_result, fixed_model, photo_set):
    r = static_result.report
    assert static_result.model_path.is_file()
    assert json.loads(static_result.report_path.read_text()) == json.loads(json.dumps(r))
    assert r["precision"] == "int8-static" and r["calibration_images"] == 9
    assert r["fidelity_vs_fp32"]["images"] == 4  # the --eval folder, never calibration images
    assert r["size_bytes"]["fp32"] == fixed_model.stat().st_size
    assert r["size_bytes"]["int8"] < r["size_bytes"]["fp32"] / 3  # INT8 weights: ~4x smaller
    f = r["fidelity_vs_fp32"]
    assert 0 <= f["mean_absrel"] <= f["worst_absrel"] and 0 <= f["worst_delta1"] <= f["mean_delta1"] <= 1
    lat = r["latency_ms"]
    assert r["speedup_vs_fp32"] == pytest.approx(lat["fp32"]["median_ms"] / lat["int8"]["median_ms"])
    ops = {n.op_type for n in __import__("onnx").load(str(static_result.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    hm = DepthHeatmapper(static_result.model_path)
    result = hm.predict(photo_set["coffee"], order="rgb")
    assert result.depth.shape == (400, 600) and result.heatmap.dtype == np.uint8


def test_metadata_is_carried_and_extended(static_result, fixed_model):
    src = dict(create_session(fixed_model).get_modelmeta().custom_metadata_map)
    dst = dict(create_session(static_result.model_path).get_modelmeta().custom_metadata_map)
    for key in ("midas_onnx.input_size", "midas_onnx.checkpoint_sha256", "midas_onnx.mean", "midas_onnx.export_versions"):
        assert dst[key] == src[key]
    info = ModelInfo.from_props(dst)
    assert info.precision == "int8-static"
    assert QuantConfig.from_dict(json.loads(dst["midas_onnx.quantization"])) == PRESETS["static"]
    assert dst["midas_onnx.source_model_sha256"] == sha256_file(fixed_model)


def test_held_out_split_without_eval(tmp_path, fixed_model, calib_dir):
    cfg = PRESETS["static"].with_(calibration="minmax", keep_float=("stem", "head"))
    with pytest.warns(UserWarning):
        res = quantize_model(fixed_model, tmp_path / "split.onnx", cfg, calib_dir, threads=2, latency_runs=2)
    assert res.report["calibration_images"] == 7 and res.report["fidelity_vs_fp32"]["images"] == 2
    assert len(res.report["kept_float_nodes"]) == 4
    assert (tmp_path / "split.report.json").is_file()


def test_cli_dynamic_int8(tmp_path, fixed_model, eval_dir):
    src = tmp_path / "m.onnx"
    src.write_bytes(fixed_model.read_bytes())
    result = CliRunner().invoke(main, ["quantize", "--int8", "--dynamic", "--eval", str(eval_dir), "--threads", "2", str(src)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "m.int8-dynamic.onnx"
    assert "int8-dynamic model:" in result.output and "AbsRel mean" in result.output and "speed-up" in result.output
    report = json.loads((tmp_path / "m.int8-dynamic.report.json").read_text())
    assert report["calibration_images"] == 0 and report["fidelity_vs_fp32"]["images"] == 4
    assert "calibration" not in report["config"]
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert "ConvInteger" in ops
    assert DepthHeatmapper(out).info.precision == "int8-dynamic"


def test_already_quantized_is_refused(static_result, tmp_path, calib_dir):
    with pytest.raises(ModelError, match="already quantized \\(int8-static\\)"):
        quantize_model(static_result.model_path, tmp_path / "again.onnx", PRESETS["static"], calib_dir)


def test_static_needs_readable_images(tmp_path, fixed_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match="needs calibration images"):
        quantize_model(fixed_model, tmp_path / "x.onnx", PRESETS["static"], empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationError, match="no readable calibration images among 2 files"):
        quantize_model(fixed_model, tmp_path / "x.onnx", PRESETS["static"], junk)
    result = CliRunner().invoke(main, ["quantize", "--int8", str(fixed_model), "-o", str(tmp_path / "y.onnx")])
    assert result.exit_code == 1 and "static INT8 needs calibration images" in result.output


def test_static_on_dynamic_model_is_refused(tmp_path, dynamic_model, calib_dir):
    with pytest.raises(ModelError, match="dynamic-size model; static INT8 needs a fixed input size"):
        quantize_model(dynamic_model, tmp_path / "x.onnx", PRESETS["static"], calib_dir)


def test_foreign_model_and_existing_output(tmp_path, fixed_model, calib_dir):
    foreign = write_foreign_onnx(tmp_path / "foreign.onnx", op="Relu", input_name="image", output_name="depth")
    with pytest.raises(ModelError, match="is not a midas-onnx model"):
        quantize_model(foreign, tmp_path / "x.onnx", PRESETS["static"], calib_dir)
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"keep me")
    with pytest.raises(ModelError, match="exists; pass --force"):
        quantize_model(fixed_model, taken, PRESETS["static"], calib_dir)
    assert taken.read_bytes() == b"keep me"


def test_config_validation():
    with pytest.raises(ValueError, match="calibration must be one of"):
        QuantConfig(calibration="kl")
    with pytest.raises(ValueError, match="keep_float roles"):
        QuantConfig(keep_float=("neck",))
    with pytest.raises(ValueError, match="mode must be one of"):
        QuantConfig(mode="fp16")
    cfg = QuantConfig(keep_float=("head",), calibration="entropy")
    assert QuantConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_real_checkpoint_int8_fidelity_bars(real_checkpoint, tmp_path, calib_dir, eval_dir):
    """With the official weights: static INT8 keeps delta<1.25 >= 0.98, AbsRel <= 0.03."""
    from export.checkpoint import build_model
    from export.onnx_export import export_onnx

    model, sha = build_model(real_checkpoint)
    fp32 = export_onnx(model, tmp_path / "real.onnx", (256, 256), sha)
    with pytest.warns(UserWarning):
        res = quantize_model(fp32, tmp_path / "real.int8.onnx", PRESETS["static"], calib_dir, eval_dir, latency_runs=3)
    f = res.report["fidelity_vs_fp32"]
    assert f["mean_delta1"] >= 0.98 and f["mean_absrel"] <= 0.03, f
