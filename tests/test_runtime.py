"""DepthHeatmapper on real exported models and real photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from runtime import DepthHeatmapper, ImageError, ImageTooLarge, ModelError
from runtime.heatmapper import DepthResult
from runtime.outputs.postprocess import COLORMAPS

from .conftest import FIXTURES, REPO, write_foreign_onnx


@pytest.fixture(scope="module")
def hm(fixed_model):
    return DepthHeatmapper(fixed_model, threads=2)


@pytest.fixture(scope="module")
def hm_dyn(dynamic_model):
    return DepthHeatmapper(dynamic_model, threads=2)


def test_importing_and_running_the_runtime_never_imports_torch(fixed_model):
    """Production installs have no torch; with torch installed, the runtime must still not touch it."""
    code = (
        "import sys, numpy as np\n"
        "from runtime import DepthHeatmapper\n"
        f"hm = DepthHeatmapper({str(fixed_model)!r})\n"
        "hm.predict(np.zeros((64, 80, 3), np.uint8))\n"
        "import midas_onnx.cli, midas_onnx.cli.heatmap_cmd, midas_onnx.cli.info_cmd\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'onnx'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import importlib.util

    assert importlib.util.find_spec("torch") is not None  # the check above means something


def test_shapes_dtypes_ranges_on_photos(hm, photo_set):
    for name, photo in photo_set.items():
        result = hm.predict(photo, order="rgb")
        h, w = photo.shape[:2]
        assert result.depth.shape == (h, w) and result.depth.dtype == np.float32, name
        assert result.heatmap.shape == (h, w, 3) and result.heatmap.dtype == np.uint8, name
        assert np.isfinite(result.depth).all()
        # the network ends in ReLU; bicubic resizing back (as upstream) may ring below zero
        assert result.depth.min() >= -0.15 * np.ptp(result.depth), name
        assert result.heatmap.std() > 0, name


def test_network_output_is_non_negative(hm, photo_set):
    out = hm._run(hm.preprocess(photo_set["astronaut"], "rgb"))
    assert out.shape == (1, 256, 256) and out.min() >= 0.0 and out.max() > 0.0


def test_heatmap_is_the_colormap_of_the_depth(hm, photo_set):
    photo = photo_set["coffee"]
    result = hm.predict(photo, order="rgb")
    d = result.depth
    levels = np.clip((d - d.min()) / (d.max() - d.min()) * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(result.heatmap, cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO))
    turbo = DepthHeatmapper(hm.model_path, colormap="TURBO").heatmap(photo, order="rgb")
    np.testing.assert_array_equal(turbo, cv2.applyColorMap(levels, cv2.COLORMAP_TURBO))
    assert {"inferno", "turbo", "viridis", "jet"} <= set(COLORMAPS)


def test_unknown_colormap(fixed_model):
    with pytest.raises(ValueError, match="unknown colormap 'rainbowz'; choose from .*inferno"):
        DepthHeatmapper(fixed_model, colormap="rainbowz")


def test_upstream_pipeline_golden(dynamic_model, engine):
    """Photos -> depth exactly as upstream's hub transform + network + bicubic resize back,
    on each inference engine."""
    hm_dyn = DepthHeatmapper(dynamic_model, threads=2, engine=engine)
    path = FIXTURES / "midas_small_pipeline_golden_seed0.npz"
    if not path.is_file():
        pytest.skip("needs ../shared/fixtures")
    golden = np.load(path)
    index = json.loads(str(golden["index"]))
    assert len(index["items"]) == 3
    for item in index["items"]:
        i = item["i"]
        depth = hm_dyn.predict(golden[f"rgb_{i}"], order="rgb").depth
        want = golden[f"depth_{i}"]
        assert depth.shape == want.shape
        err = np.abs(depth - want).max() / np.ptp(want)
        assert err < 1e-4, (item["photo"], err)


def test_dynamic_network_sizes_follow_upstream(hm_dyn):
    from runtime.model.preprocess import network_size

    info = hm_dyn.info
    assert network_size(480, 640, info) == (192, 256)
    assert network_size(427, 640, info) == (160, 256)
    assert network_size(640, 427, info) == (256, 160)
    assert network_size(1080, 1920, info) == (128, 256)
    assert network_size(20, 30, info) == (160, 256)  # upstream scales small photos up too
    assert network_size(100, 4000, info) == (32, 256)  # never below one multiple of 32


def test_batch_equals_one_by_one(hm, hm_dyn, photo_set):
    batch = list(photo_set.values())
    for model in (hm, hm_dyn):
        together = model.predict_batch(batch, order="rgb")
        for photo, res in zip(batch, together, strict=True):
            alone = model.predict(photo, order="rgb")
            assert res.depth.shape == photo.shape[:2]
            np.testing.assert_allclose(res.depth, alone.depth, rtol=0, atol=1e-4 * np.ptp(alone.depth))


def test_batch_session_calls_follow_shapes_and_the_cap(hm_dyn, photo_set):
    """One session call per network shape, split into calls of at most ``per_call`` images;
    results in input order whatever the split."""
    photo = photo_set["chelsea"]  # 300x451: network 160x256
    wide = np.ascontiguousarray(np.concatenate([photo, photo], axis=1))  # 300x902: 96x256
    batch = [photo, wide, photo, photo, wide, photo, photo]
    sizes = []
    real = hm_dyn._run
    hm_dyn._run = lambda x: (sizes.append(x.shape[:3]), real(x))[1]
    try:
        whole = hm_dyn.predict_batch(batch, order="rgb")
        calls_whole, sizes[:] = list(sizes), []
        capped = hm_dyn.predict_batch(batch, order="rgb", per_call=2)
    finally:
        del hm_dyn._run
    assert sorted(calls_whole) == [(2, 3, 96), (5, 3, 160)]
    assert sorted(sizes) == [(1, 3, 160), (2, 3, 96), (2, 3, 160), (2, 3, 160)]
    for item, a, b in zip(batch, whole, capped, strict=True):
        assert a.depth.shape == b.depth.shape == item.shape[:2]
        np.testing.assert_allclose(a.depth, b.depth, rtol=0, atol=1e-4 * np.ptp(a.depth))


def test_concurrent_calls_from_threads(hm, photo_set):
    photos = list(photo_set.values())
    expected = [hm.predict(p, order="rgb").depth for p in photos]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: hm.predict(p, order="rgb").depth, photos * 4))
    for i, depth in enumerate(results):
        np.testing.assert_allclose(depth, expected[i % len(photos)], rtol=0, atol=1e-5 * np.ptp(depth))


def test_input_forms_agree(hm, photo_set, tmp_path):
    rgb = photo_set["chelsea"]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    ok, png = cv2.imencode(".png", bgr)
    path = tmp_path / "chelsea.png"
    path.write_bytes(png.tobytes())
    reference = hm.predict(rgb, order="rgb").depth
    for form, kw in [(bgr, {}), (png.tobytes(), {}), (str(path), {}), (path, {}),
                     (rgb.astype(np.float32) / 255, {"order": "rgb"}),
                     (np.dstack([bgr, np.full(rgb.shape[:2], 255, np.uint8)]), {}),
                     ((rgb.astype(np.uint16) * 257), {"order": "rgb"})]:
        np.testing.assert_allclose(hm.predict(form, **kw).depth, reference, rtol=0, atol=1e-4 * np.ptp(reference))


def test_grayscale_and_16bit_files(hm, photo_set, tmp_path):
    gray = photo_set["camera"]
    for arr in (gray, gray[:, :, None]):
        assert hm.predict(arr).depth.shape == gray.shape
    path16 = tmp_path / "gray16.png"
    cv2.imwrite(str(path16), gray.astype(np.uint16) * 257)
    reference = hm.predict(gray).depth
    np.testing.assert_allclose(hm.predict(path16).depth, reference, rtol=0, atol=1e-4 * np.ptp(reference))


def test_exif_orientation_is_applied(hm, photo_set, tmp_path):
    from PIL import Image

    rgb = photo_set["coffee"]  # 400x600 landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": viewers show it portrait
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, exif=exif.tobytes())
    result = hm.predict(path)
    assert result.depth.shape == (600, 400)
    assert result.image.shape == (600, 400, 3)


def test_constant_image_does_not_divide_by_zero(hm):
    result = hm.predict(np.full((100, 120, 3), 128, np.uint8))
    assert np.isfinite(result.depth).all()
    assert result.heatmap.shape == (100, 120, 3)


def test_flat_depth_maps_to_one_colour_in_every_block():
    """A flat depth map of more rows than one level block becomes level 0 everywhere, without
    dividing by zero (NaN cast to integers would also often give 0, so warnings are errors):
    one colour in the heatmap, zeros in the 16-bit PNG."""
    import warnings

    result = DepthResult(np.full((600, 40), 3.0, np.float32), source=None)
    want = cv2.applyColorMap(np.zeros((1, 1), np.uint8), result.colormap)[0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heatmap, png16 = result.heatmap, result.depth_png16()
    assert (heatmap == want).all()
    assert png16.dtype == np.uint16 and not png16.any()


def test_overlay_and_depth16(hm, photo_set):
    result = hm.predict(photo_set["astronaut"], order="rgb")
    d16 = result.depth_png16()
    assert d16.dtype == np.uint16 and d16.min() == 0 and d16.max() == 65535
    ov = result.overlay(0.5)
    assert ov.shape == result.heatmap.shape and ov.dtype == np.uint8
    expected = cv2.addWeighted(result.heatmap, 0.5, result.image, 0.5, 0)
    np.testing.assert_array_equal(ov, expected)
    with pytest.raises(ValueError, match="alpha"):
        result.overlay(1.5)


@pytest.mark.parametrize("bad, message", [
    (b"", "empty file"),
    (b"GIF89a not really", "not a decodable image"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "truncated JPEG"),
    (np.zeros((10, 10, 2), np.uint8), "unsupported array shape"),
    (np.zeros((0, 10, 3), np.uint8), "empty image"),
    (np.zeros((10, 10, 3), np.int32), "unsupported dtype int32"),
    (np.full((10, 10, 3), 3.0, np.float32), "must lie in \\[0, 1\\]"),
    (np.full((10, 10), np.nan, np.float32), "NaN"),
    (12345, "expected a path, bytes or numpy array"),
])
def test_bad_inputs_get_clear_errors(hm, bad, message):
    with pytest.raises(ImageError, match=message):
        hm.predict(bad)


def test_truncated_photo_file_is_refused(hm, photo_set, tmp_path):
    ok, jpg = cv2.imencode(".jpg", photo_set["astronaut"])
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpg.tobytes()[: len(jpg) * 3 // 4])
    with pytest.raises(ImageError, match=f"{path}: truncated JPEG"):
        hm.predict(path)
    with pytest.raises(ImageError, match="no such file"):
        hm.predict(tmp_path / "missing.jpg")


def test_pixel_limit(fixed_model, photo_set):
    small = DepthHeatmapper(fixed_model, max_pixels=100_000)
    with pytest.raises(ImageTooLarge, match="above the limit of 100,000"):
        small.predict(photo_set["astronaut"], order="rgb")  # 262,144 pixels


def test_decompression_bomb_refused_from_the_header(tmp_path, fixed_model):
    """With the limit in force before OpenCV loads, the decoder refuses from the header."""
    path = tmp_path / "bomb.png"
    cv2.imwrite(str(path), np.zeros((3000, 3000), np.uint8))  # 9 MP, a few KB compressed
    code = (
        "from runtime import DepthHeatmapper, ImageError\n"
        f"hm = DepthHeatmapper({str(fixed_model)!r})\n"
        f"try:\n    hm.predict({str(path)!r})\nexcept ImageError as e:\n    print(e)\n"
    )
    env = {**os.environ, "MIDAS_ONNX_MAX_PIXELS": "1000000"}
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "exceeds the pixel limit (1,000,000 pixels); refused" in out.stdout


def test_model_that_is_not_ours(tmp_path):
    foreign = write_foreign_onnx(tmp_path / "foreign.onnx")
    with pytest.raises(ModelError, match="is not a midas-onnx model"):
        DepthHeatmapper(foreign)
    with pytest.raises(ModelError, match="expected one NCHW input named 'image'"):
        DepthHeatmapper(foreign, input_size="256x256")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(ModelError, match="is not a usable ONNX model"):
        DepthHeatmapper(text)
    with pytest.raises(ModelError, match="model file not found"):
        DepthHeatmapper(tmp_path / "absent.onnx")


@pytest.mark.parametrize("src_hw, dst_hw", [((480, 640), (192, 256)), ((427, 640), (160, 256)), ((640, 427), (256, 160)),
                                            ((20, 30), (160, 256)), ((1080, 1920), (128, 256)), ((256, 256), (256, 256)),
                                            ((300, 451), (160, 256))])
def test_resize_matches_upstreams_float64_opencv_resize(src_hw, dst_hw):
    """Upstream: cv2.resize(img / 255.0, INTER_CUBIC) in float64. Ours reads only the taps'
    rows and columns from the uint8/uint16 pixels; it must agree to float32 rounding, where
    OpenCV's own float32 path is off by ~2e-5 on some of these scales."""
    from runtime.model.preprocess import resize_bicubic

    rng = np.random.default_rng(sum(src_hw))
    for image, top in [(rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8), 255.0),
                       (rng.integers(0, 65536, src_hw, dtype=np.uint16), 65535.0)]:
        want = cv2.resize(image.astype(np.float64) / top, dst_hw[::-1], interpolation=cv2.INTER_CUBIC)
        got = resize_bicubic(image, *dst_hw) / top
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-6


@pytest.mark.parametrize("float_copy", ["whole photo", "row by row"])
def test_network_input_matches_upstreams_transform(hm_dyn, float_copy, monkeypatch):
    """The pipeline golden stores upstream's small_transform output for each photo. Upstream
    normalises in float64 and casts once; so does the runtime, and the inputs are equal to
    the bit, from RGB and from BGR pixels alike, whether the photo is converted to float
    whole (small photos) or read row by row (large ones)."""
    from runtime.model import preprocess

    path = FIXTURES / "midas_small_pipeline_golden_seed0.npz"
    if not path.is_file():
        pytest.skip("needs ../shared/fixtures")
    golden = np.load(path)
    if float_copy == "row by row":
        monkeypatch.setattr(preprocess, "_FLOAT_COPY_BYTES", 0)  # the photos shrink: the strip is smaller
    for i in range(3):
        rgb = golden[f"rgb_{i}"]
        for x in (hm_dyn.preprocess(rgb, "rgb"), hm_dyn.preprocess(np.ascontiguousarray(rgb[:, :, ::-1]))):
            assert x.dtype == np.float32
            np.testing.assert_array_equal(x, golden[f"net_input_{i}"])


def test_input_size_chooses_the_dynamic_models_size(hm_dyn, dynamic_model, fixed_model, photo_set):
    """``input_size``: N re-aims a dynamic model's resize rule, "HxW" runs it at one size;
    a fixed model runs only at its own size and says so."""
    photo = photo_set["coffee"]  # 400x600
    assert hm_dyn.preprocess(photo, "rgb").shape == (1, 3, 160, 256)
    big = DepthHeatmapper(dynamic_model, threads=2, input_size=384)
    assert big.info.description.input.size == 384 and big.info.dynamic
    assert big.preprocess(photo, "rgb").shape == (1, 3, 256, 384)
    assert big.predict(photo, order="rgb").depth.shape == (400, 600)
    pinned = DepthHeatmapper(dynamic_model, threads=2, input_size="192x320")
    assert pinned.preprocess(photo, "rgb").shape == (1, 3, 192, 320) and pinned.info.input_size_text == "192x320"
    assert DepthHeatmapper(fixed_model, input_size="256x256").info.input_hw == (256, 256)
    with pytest.raises(ModelError, match="is a fixed 256x256 model: it cannot run at input size 384"):
        DepthHeatmapper(fixed_model, input_size=384)
    with pytest.raises(ModelError, match="input size must be a positive multiple of 32, got 300"):
        DepthHeatmapper(dynamic_model, input_size="300")
    with pytest.raises(ModelError, match="multiples of 32, got 200x320"):
        DepthHeatmapper(dynamic_model, input_size="200x320")


def test_large_photo_peak_memory_is_bounded(tmp_path, dynamic_model):
    """A 40 MP JPEG through predict, in a fresh process: peak RSS above the warm baseline is
    at most the decoded image, the full-size depth and heatmap, and a small constant.
    (Upstream's float64 pre-processing alone would add 24 bytes a pixel: about 1 GB here.)"""
    from benchmarks.large_photo import BYTES_PER_PIXEL, measure, write_photo

    photo = tmp_path / "large.jpg"
    h, w = write_photo(photo, 40.0)
    result = measure(dynamic_model, photo, threads=2)
    assert result["shape"] == [h, w]
    assert h * w >= 40e6 * 0.99
    assert result["peak_above_baseline_bytes"] <= result["bound_bytes"], result
    # and the bound is not loose enough to hide a full-size float32 RGB copy (12 bytes a pixel)
    assert result["bound_bytes"] < h * w * (BYTES_PER_PIXEL + 12)
