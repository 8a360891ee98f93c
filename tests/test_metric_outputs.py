"""Metric models through every output, and Depth Anything files through ``heatmap``.

A metric model (Depth Anything V2 Small, metric indoor: metres up to 20) writes depth files
in metres (the 16-bit PNG on its fixed 0-20 m scale), heatmaps coloured over that fixed
range with the legend stated in the PNG and in job.json, and point clouds in metres without
known points. The job record holds the model's description: another model or input size
into the same OUTPUT is refused in one line, the same one resumes. ``--engine`` runs each
installed engine. One Depth Anything export per test session (``da_file``), at input size
140 (a tenth of 518's tokens) to stay fast; the relative file is that export relabelled.
"""

from __future__ import annotations

import io
import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from runtime import DepthHeatmapper
from runtime.outputs.depth_files import encode_depth, read_pfm
from runtime.model.model_description import DA_V2_SMALL, DA_V2_SMALL_METRIC_INDOOR, MIDAS_SMALL, OutputRule
from runtime.outputs.render import colour_range, legend
from runtime.outputs.postprocess import colorize, colormap_id, palette

from .test_engine import cli

SIZE = "140"  # --input-size: a multiple of 14, 10x10 tokens for a square photo
METRIC = DA_V2_SMALL_METRIC_INDOOR
_FILES: dict = {}  # one export per session, whichever test file asks first (see da_file)


def da_file(tmp_path_factory, kind: str = "metric"):
    """``export --model da-v2-small-metric-indoor --checkpoint <recipe .pth>`` through the CLI,
    once per test session for every test file that asks (a module's own session fixture
    would export once per module). ``kind="relative"``: the same network with Depth Anything
    V2 Small's (relative) description in its metadata: the runtime configures pre- and
    post-processing from the description alone, so this is a relative file of the family."""
    if kind not in _FILES:
        if "metric" not in _FILES:
            import torch

            from .test_da_v2 import _cli_export, _recipe

            folder = tmp_path_factory.mktemp("da_file")
            checkpoint = folder / "depth_anything_v2_metric_hypersim_vits_recipe.pth"
            torch.save(_recipe().recipe_state_dict(), checkpoint)
            _FILES["metric"] = _cli_export(folder, checkpoint, METRIC.id)[0]
        if kind == "relative":
            import onnx

            from runtime.model.metadata import PREFIX, set_metadata

            model = onnx.load(str(_FILES["metric"]))
            set_metadata(model, {PREFIX + "description": DA_V2_SMALL.to_json(), PREFIX + "model": DA_V2_SMALL.name})
            _FILES["relative"] = _FILES["metric"].with_name("da-v2-small-relabelled.onnx")
            onnx.save(model, str(_FILES["relative"]))
    return _FILES[kind]


@pytest.fixture(scope="module")
def metric_model(tmp_path_factory):
    return da_file(tmp_path_factory)


@pytest.fixture(scope="module")
def metric_hm(metric_model):
    return DepthHeatmapper(metric_model, threads=2, input_size=int(SIZE))


@pytest.fixture(scope="module")
def room(tmp_path_factory, photo_set):
    """Two photos (the colours must mean the same metres in both), small: 160x120 and 120x160."""
    folder = tmp_path_factory.mktemp("room")
    cv2.imwrite(str(folder / "coffee.jpg"), cv2.resize(photo_set["coffee"][:, :, ::-1], (160, 120)))
    cv2.imwrite(str(folder / "rocket.png"), cv2.resize(photo_set["rocket"][:, :, ::-1], (120, 160)))
    return folder


def heatmap(*args):
    r = cli("heatmap", *args)
    assert r.exit_code == 0, r.output
    return r


def png_text(path) -> dict:
    with Image.open(path) as image:
        return dict(image.text)


def expected_colours(metres: np.ndarray, shift: int = 0, colormap: str = "inferno") -> np.ndarray:
    """The legend written out: level round((20 - d) / 20 * 255) (+ ``shift``), clipped, through
    the colormap's palette."""
    levels = np.floor((20.0 - metres.astype(np.float64)) / 20.0 * 255 + 0.5) + shift
    return palette(colormap_id(colormap))[np.clip(levels, 0, 255).astype(np.uint8)][..., 0, :]


def test_metric_depth_files_hold_metres_and_colours_follow_the_legend(metric_model, metric_hm, room, tmp_path):
    out = tmp_path / "out"
    r = heatmap(room, "-o", out, "--model", metric_model, "--input-size", SIZE, "--save-depth", "npy", "--overlay")
    assert "da-v2-small-metric-indoor (metres, 0-20 m)" in r.stderr and "size 140" in r.stderr
    record = json.loads((out / "job.json").read_text())
    want_legend = {"colormap": "inferno", "unit": "m", "level_0_m": 20.0, "level_255_m": 0.0, "scale": "linear"}
    assert record["legend"] == want_legend
    assert record["description"] == json.loads(METRIC.with_input_size(140).to_json())
    for name in ("coffee.jpg", "rocket.png"):
        metres = metric_hm.predict(room / name).depth
        assert 0 < metres.min() and metres.max() < 20 and np.ptp(metres) > 0.5
        np.testing.assert_array_equal(np.load(out / f"{name}.depth.npy"), metres)
        heat = cv2.imread(str(out / f"{name}.heatmap.png"))
        # the fixed legend, not this photo's own min-max (what relative models get): each
        # pixel the legend's colour, or its neighbour's where float32 rounds the other way
        near = [expected_colours(metres, shift) for shift in (0, -1, 1)]
        assert (heat == near[0]).all(axis=2).mean() > 0.999
        assert np.logical_or.reduce([(heat == c).all(axis=2) for c in near]).all()
        assert np.abs(heat.astype(int) - metric_hm.predict(room / name).heatmap).mean() > 10
        assert json.loads(png_text(out / f"{name}.heatmap.png")["midas-onnx:legend"]) == want_legend
        assert json.loads(png_text(out / f"{name}.overlay.png")["midas-onnx:legend"]) == want_legend
        overlay = cv2.imread(str(out / f"{name}.overlay.png")).astype(int)
        photo = cv2.imread(str(room / name)).astype(int)
        assert np.abs(overlay - (heat.astype(int) + photo) / 2).max() <= 1  # the legend's colours, blended
    pfm_out, png_out = tmp_path / "pfm", tmp_path / "png16"
    heatmap(room / "coffee.jpg", "-o", pfm_out, "--model", metric_model, "--input-size", SIZE, "--save-depth", "pfm")
    heatmap(room / "coffee.jpg", "-o", png_out, "--model", metric_model, "--input-size", SIZE, "--save-depth")
    metres = metric_hm.predict(room / "coffee.jpg").depth
    np.testing.assert_array_equal(read_pfm(pfm_out / "coffee.jpg.depth.pfm")[0], metres)
    depth16 = cv2.imread(str(png_out / "coffee.jpg.depth.png"), cv2.IMREAD_UNCHANGED)
    assert depth16.dtype == np.uint16
    assert np.abs(depth16 / 65535 * 20 - metres).max() <= 0.5 * 20 / 65535 + 1e-5  # metres = value / 65535 * 20
    note = json.loads(png_text(png_out / "coffee.jpg.depth.png")["midas-onnx:depth"])
    assert note == {"unit": "m", "range_m": [0.0, 20.0], "metres": "value / 65535 * 20", "no_depth": 0}


def test_metric_png16_scale_clips_and_marks_no_depth():
    """Past the range is clipped to its ends, NaN (no depth) is 0; a relative rule (or none)
    keeps the per-image min-max."""
    rule = OutputRule(kind="metric_depth", resize="bilinear_align_corners", unit="m", max_depth=20.0)
    depth = np.array([[0.5, 10.0, 25.0, np.nan]], np.float32)
    got = cv2.imdecode(np.frombuffer(encode_depth(depth, "png16", rule), np.uint8), cv2.IMREAD_UNCHANGED)
    assert got.tolist() == [[round(0.5 / 20 * 65535), round(10 / 20 * 65535), 65535, 0]]
    plain = np.array([[1.0, 2.0, 3.0]], np.float32)
    for relative in (None, MIDAS_SMALL.output):
        back = cv2.imdecode(np.frombuffer(encode_depth(plain, "png16", relative), np.uint8), cv2.IMREAD_UNCHANGED)
        assert back.tolist() == [[0, 32768, 65535]]
    assert colour_range(MIDAS_SMALL.output) is None and legend(DA_V2_SMALL.output, "turbo") is None


def test_metric_point_cloud_is_in_metres_without_known_points(metric_model, metric_hm, room, tmp_path):
    """z is the model's metres at every kept pixel; the camera from the photo's EXIF (26 mm
    equivalent); the header says so."""
    from plyfile import PlyData

    from .test_exif import with_exif

    photo = tmp_path / "phone.jpg"
    photo.write_bytes(with_exif((room / "coffee.jpg").read_bytes(), focal_35mm=26))
    heatmap(photo, "-o", tmp_path / "out", "--model", metric_model, "--input-size", SIZE, "--save-ply",
            "--ply-step", "4", "--fov", "90")
    ply = PlyData.read(str(tmp_path / "out" / "phone.jpg.ply"))
    header = "\n".join(ply.comments)
    assert "units: metres" in header and "metres: the model's own output" in header and "relative" not in header
    assert f"made by midas-onnx from {METRIC.title} depth" in header
    assert "intrinsics source: EXIF FocalLengthIn35mmFilm 26 mm (35 mm equivalent, across the diagonal)" in header
    metres = metric_hm.predict(photo).depth[::4, ::4]
    v = ply["vertex"]
    assert len(v) == metres.size  # every pixel: metres need no relative floor
    np.testing.assert_array_equal(v["z"], metres.ravel())
    f = 26 * math.hypot(160, 120) / math.hypot(36, 24)  # not --fov 90's 80 pixels
    u = np.arange(0, 160, 4)[None, :].repeat(30, 0).ravel()
    np.testing.assert_allclose(v["x"], (u - 79.5) * metres.ravel() / f, rtol=1e-5, atol=1e-6)


def blocks(image: np.ndarray) -> np.ndarray:
    """Means of 8x8 blocks of a 160x120 frame."""
    return cv2.resize(image.astype(np.float32), (20, 15), interpolation=cv2.INTER_AREA)


def test_metric_video_colours_hold_the_legend_in_every_frame(metric_model, metric_hm, tmp_path, photo_set):
    """Each frame coloured over 0-20 m (no steadying: the range is fixed), depth frames on the
    fixed png16 scale, frames.csv saying 0,20 for each."""
    from .test_heatmap_cli import read_frames, write_video

    src = tmp_path / "clip.avi"
    write_video(src, photo_set["astronaut"], frames=4, fourcc="MJPG")
    out = tmp_path / "out"
    heatmap(src, "-o", out, "--model", metric_model, "--input-size", SIZE, "--save-depth")
    frames = read_frames(src)
    heat = read_frames(out / "clip.avi.heatmap.mp4")
    assert len(heat) == len(frames) == 4
    rows = (out / "clip.avi.depth" / "frames.csv").read_text().splitlines()
    assert rows == ["frame,lo,hi"] + [f"{i},0.0,20.0" for i in range(4)]
    for i, frame in enumerate(frames):
        metres = metric_hm.predict(frame).depth
        got = cv2.imread(str(out / "clip.avi.depth" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.abs(got / 65535 * 20 - metres).max() <= 20 / 65535
        # compared as 8x8 block means: mp4v's loss is in the fine detail (2 levels on average
        # here), a frame coloured over its own range is off by about 100
        want = blocks(colorize(metres, colormap_id("inferno"), (20.0, 0.0)))
        assert np.abs(blocks(heat[i]) - want).mean() < 4
        assert np.abs(blocks(heat[i]) - blocks(colorize(metres, colormap_id("inferno")))).mean() > 30


def test_job_record_names_the_model_a_rerun_must_match(metric_model, fixed_model, room, tmp_path):
    out = tmp_path / "out"
    photo = room / "coffee.jpg"
    heatmap(photo, "-o", out, "--model", metric_model, "--input-size", SIZE)
    assert "0 done, 1 skipped" in heatmap(photo, "-o", out, "--model", metric_model, "--input-size", SIZE).stdout
    other_size = cli("heatmap", photo, "-o", out, "--model", metric_model, "--input-size", "252")
    assert other_size.exit_code == 1
    assert other_size.stderr.splitlines() == [
        f"error: {out} holds outputs made with other settings (model {METRIC.id}: input.size 140 -> 252); rerun "
        "with --force to redo them all, or write to another OUTPUT"]
    other_model = cli("heatmap", photo, "-o", out, "--model", fixed_model)
    assert other_model.exit_code == 1 and len(other_model.stderr.splitlines()) == 1
    assert f"(model {METRIC.id} -> midas-small; model_sha256 " in other_model.stderr and "--force" in other_model.stderr
    forced = heatmap(photo, "-o", out, "--model", fixed_model, "--force")
    assert "1 done, 0 skipped" in forced.stdout
    assert json.loads((out / "job.json").read_text())["description"]["id"] == "midas-small"
    assert "legend" not in json.loads((out / "job.json").read_text())  # relative: colours span each image


def test_metric_model_with_known_depths_fits_one_scale(metric_model, room, tmp_path):
    """A metric model's metres, scaled by the one factor the known points agree on (an
    outlier rejected); no shift, so metres stay proportional to the model's own."""
    photo = room / "coffee.jpg"
    plain = tmp_path / "plain"
    heatmap(photo, "-o", plain, "--model", metric_model, "--input-size", SIZE, "--save-depth", "npy")
    own = np.load(plain / "coffee.jpg.depth.npy")
    h, w = own.shape
    spots = [(w // 5, h // 5), (w // 2, h // 2), (4 * w // 5, h // 3), (w // 3, 4 * h // 5)]
    points = tmp_path / "points.csv"
    rows = [f"{x},{y},{1.5 * own[y, x]:.6f}" for x, y in spots] + [f"{w // 2},{h // 5},{50 * own[h // 5, w // 2]:.6f}"]
    points.write_text("x,y,depth_m\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    heatmap(photo, "-o", out, "--model", metric_model, "--input-size", SIZE, "--known-depths", points,
            "--save-depth", "npy")
    fit = json.loads((out / "coffee.jpg.align.json").read_text())
    assert fit["fitted_in"] == "metres" and fit["shift"] == 0.0 and abs(fit["scale"] - 1.5) < 1e-4
    assert len(fit["points_used"]) == 4 and len(fit["points_rejected"]) == 1
    np.testing.assert_allclose(np.load(out / "coffee.jpg.depth.npy"), 1.5 * own, rtol=1e-4)


def test_heatmap_on_each_engine(metric_model, room, tmp_path, engine):
    """``--engine`` reaches the session: the depth is that engine's, within 1e-4 of the range
    of onnxruntime's."""
    out = tmp_path / engine
    r = heatmap(room / "coffee.jpg", "-o", out, "--model", metric_model, "--input-size", SIZE, "--engine", engine,
                "--save-depth", "npy")
    assert f", {engine}); " in r.stderr
    got = np.load(out / "coffee.jpg.depth.npy")
    want = DepthHeatmapper(metric_model, threads=2, input_size=int(SIZE), engine=engine).predict(room / "coffee.jpg")
    np.testing.assert_array_equal(got, want.depth)
    reference = DepthHeatmapper(metric_model, threads=2, input_size=int(SIZE)).predict(room / "coffee.jpg").depth
    assert np.abs(got - reference).max() <= 1e-4 * 20


def test_relative_depth_anything_file_keeps_relative_outputs(tmp_path_factory, room, tmp_path):
    """Depth Anything's relative description: per-image colours and png16, no legend."""
    model = da_file(tmp_path_factory, "relative")
    out = tmp_path / "out"
    r = heatmap(room / "rocket.png", "-o", out, "--model", model, "--input-size", SIZE, "--save-depth")
    assert "da-v2-small (relative)" in r.stderr
    result = DepthHeatmapper(model, threads=2, input_size=int(SIZE)).predict(room / "rocket.png")
    assert not result.output.metric
    np.testing.assert_array_equal(cv2.imread(str(out / "rocket.png.heatmap.png")), result.heatmap)
    np.testing.assert_array_equal(cv2.imread(str(out / "rocket.png.depth.png"), cv2.IMREAD_UNCHANGED),
                                  result.depth_png16())
    assert png_text(out / "rocket.png.heatmap.png") == {}
    record = json.loads((out / "job.json").read_text())
    assert "legend" not in record and record["description"]["id"] == "da-v2-small"


def test_bad_input_size_is_one_line(metric_model, room, tmp_path):
    r = cli("heatmap", room, "-o", tmp_path / "out", "--model", metric_model, "--input-size", "150")
    assert r.exit_code == 1 and r.stderr == "error: input_size: input size must be a positive multiple of 14, got 150\n"


def test_png_text_chunks_are_read_by_a_png_reader():
    """``png.with_text`` keeps the PNG valid (OpenCV decodes it, PIL reads the chunk) and
    refuses keywords PNG does not allow."""
    from runtime.outputs.png import encode_png, with_text

    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = with_text(encode_png(image), {"midas-onnx:test": "{\"a\": 1}"})
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), image)
    with Image.open(io.BytesIO(data)) as read:
        assert read.text == {"midas-onnx:test": "{\"a\": 1}"}
    for keyword in ("", "x" * 80, "tab\there"):
        with pytest.raises(ValueError, match="keyword"):
            with_text(encode_png(image), {keyword: "v"})
