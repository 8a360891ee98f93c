"""Depth people use downstream: float depth files (npy, upstream's PFM), metric depth from
known points, point clouds, and video colours that hold still."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from runtime import DepthHeatmapper
from runtime.outputs.depth_files import DepthFormatError, check_format, encode_depth, pfm_bytes, read_pfm
from runtime.depth.metric import AlignmentError, align, metric_depth
from runtime.outputs.pointcloud import Intrinsics, PointCloudError, ply_bytes


def run_cli(*args: str) -> SimpleNamespace:
    """``midas-onnx ARGS`` in this process (the command's entry point; a process adds nothing here)."""
    from .test_engine import cli

    r = cli(*args)
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def upstream_read_pfm(path):
    """isl-org/MiDaS utils.read_pfm, as upstream wrote it (the format's reference reader)."""
    import re

    with open(path, "rb") as file:
        header = file.readline().rstrip()
        if header.decode("ascii") == "PF":
            color = True
        elif header.decode("ascii") == "Pf":
            color = False
        else:
            raise Exception("Not a PFM file: " + path)
        dim_match = re.match(r"^(\d+)\s(\d+)\s$", file.readline().decode("ascii"))
        if dim_match:
            width, height = list(map(int, dim_match.groups()))
        else:
            raise Exception("Malformed PFM header.")
        scale = float(file.readline().decode("ascii").rstrip())
        if scale < 0:
            endian = "<"
            scale = -scale
        else:
            endian = ">"
        data = np.fromfile(file, endian + "f")
        shape = (height, width, 3) if color else (height, width)
        data = np.reshape(data, shape)
        data = np.flipud(data)
        return data, scale


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory, photo_set):
    path = tmp_path_factory.mktemp("photo") / "coffee.jpg"
    cv2.imwrite(str(path), photo_set["coffee"][:, :, ::-1])
    return path


def test_npy_and_pfm_from_the_cli_hold_predict_depth_exactly(tmp_path, fixed_model, photo_file):
    want = DepthHeatmapper(fixed_model).predict(photo_file).depth
    for fmt in ("npy", "pfm"):
        out = tmp_path / fmt
        r = run_cli("heatmap", str(photo_file), "-o", str(out), "--model", str(fixed_model), "--save-depth", fmt)
        assert r.returncode == 0, r.stderr
        path = out / f"coffee.jpg.depth.{fmt}"
        got = np.load(path) if fmt == "npy" else upstream_read_pfm(str(path))[0]
        assert got.dtype == np.float32 and got.shape == (400, 600)
        np.testing.assert_array_equal(got, want)
    # a bare --save-depth is still the 16-bit PNG
    r = run_cli("heatmap", str(photo_file), "-o", str(tmp_path / "png"), "--model", str(fixed_model), "--save-depth")
    assert r.returncode == 0 and cv2.imread(str(tmp_path / "png" / "coffee.jpg.depth.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_pfm_is_upstreams_format_byte_for_byte(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    data = pfm_bytes(depth)
    assert data.startswith(b"Pf\n4 3\n-1.000000\n")  # grayscale, W H, little-endian scale
    assert np.frombuffer(data[len(b"Pf\n4 3\n-1.000000\n"):], "<f4").reshape(3, 4)[0].tolist() == depth[2].tolist()
    path = tmp_path / "d.pfm"
    path.write_bytes(data)
    for reader in (upstream_read_pfm, read_pfm):
        back, scale = reader(str(path))
        np.testing.assert_array_equal(back, depth)
        assert scale == 1.0
    path.write_bytes(b"P6\n4 3\n255\n")
    with pytest.raises(DepthFormatError, match="not a PFM file"):
        read_pfm(path)


def test_exr_says_how_to_enable_it_where_opencv_cannot_write_it():
    if cv2.haveImageWriter(".exr"):
        back = cv2.imdecode(np.frombuffer(encode_depth(np.eye(3, dtype=np.float32), "exr"), np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(back, np.eye(3, dtype=np.float32))
    else:
        with pytest.raises(DepthFormatError, match="OPENCV_IO_ENABLE_OPENEXR=1"):
            check_format("exr")


def synthetic_scene(seed: int = 0):
    """Known metric depth, a prediction made from it with a known scale and shift in inverse
    depth plus noise, and 10 known points of which 2 are wrong."""
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    metres = (1.5 + 6.0 * (1 - yy / h) + 0.5 * np.sin(xx / 20)).astype(np.float64)
    prediction = ((1 / metres - 0.05) / 0.2 + rng.normal(0, 0.0005, metres.shape)).astype(np.float32)
    xy = rng.integers([0, 0], [w, h], (10, 2))
    points = [(int(x), int(y), float(metres[y, x])) for x, y in xy]
    points[2] = (points[2][0], points[2][1], points[2][2] * 3.0)  # the tape hit the wall behind
    points[7] = (points[7][0], points[7][1], points[7][2] * 0.4)  # a reflection
    return metres, prediction, points


def test_alignment_recovers_metres_and_rejects_the_wrong_points():
    metres, prediction, points = synthetic_scene()
    fit = align(prediction, points)
    assert {(p.x, p.y) for p in fit.rejected} == {points[2][:2], points[7][:2]}
    assert len(fit.used) == 8
    assert fit.scale == pytest.approx(0.2, rel=0.02) and fit.shift == pytest.approx(0.05, rel=0.05)
    got = metric_depth(prediction, fit)
    assert (np.abs(got - metres) / metres).max() < 0.01  # within 1% at every pixel
    assert fit.residual_m < 0.05


def test_alignment_errors():
    _, prediction, points = synthetic_scene()
    with pytest.raises(AlignmentError, match="at least 3 known points, got 2"):
        align(prediction, points[:2])
    with pytest.raises(AlignmentError, match=r"point \(500, 10\) lies outside the 160x120 image"):
        align(prediction, points[:3] + [(500, 10, 2.0)])
    with pytest.raises(AlignmentError, match="depth_m must be a positive number, got -1"):
        align(prediction, points[:3] + [(10, 10, -1.0)])
    with pytest.raises(AlignmentError, match="depth_m must be a positive number, got nan"):
        align(prediction, points[:3] + [(10, 10, float("nan"))])
    # three points that agree on nothing: no consensus of 3
    with pytest.raises(AlignmentError, match="do not agree on one scale and shift"):
        align(prediction, [(10, 10, 1.0), (100, 60, 50.0), (150, 110, 0.2)])


def test_pixels_without_a_positive_fitted_inverse_depth_become_nan():
    prediction = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    # 1 / depth_m = 1.2 * prediction - 0.2: no positive inverse depth below prediction 1/6
    points = [(x, y, 1 / (1.2 * prediction[y, x] - 0.2)) for x, y in [(9, 9), (5, 5), (9, 5), (2, 7)]]
    fit = align(prediction, points)
    assert fit.shift < 0  # inverse depth crosses zero near prediction 0
    got = metric_depth(prediction, fit)
    inverse = prediction * fit.scale + fit.shift
    assert np.isnan(got[inverse <= 0]).all() and (got[inverse > 0] > 0).all()


def test_known_depths_from_the_cli(tmp_path, fixed_model, photo_file):
    hm = DepthHeatmapper(fixed_model)
    rel = hm.predict(photo_file).depth
    # points made from the prediction itself with a known scale and shift, one of them wrong
    rng = np.random.default_rng(3)
    rows = ["x,y,depth_m"]
    for k, (x, y) in enumerate(rng.integers([0, 0], [600, 400], (6, 2))):
        d = 1.0 / (0.5 * rel[y, x] + 0.4) * (2.5 if k == 4 else 1.0)
        rows.append(f"{x},{y},{d}")
    csv = tmp_path / "points.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    r = run_cli("heatmap", str(photo_file), "-o", str(out), "--model", str(fixed_model), "--known-depths", str(csv),
                "--save-depth", "pfm")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "coffee.jpg.align.json").read_text())
    assert len(report["points_used"]) == 5 and len(report["points_rejected"]) == 1
    assert report["scale"] == pytest.approx(0.5, rel=1e-3) and report["shift"] == pytest.approx(0.4, rel=1e-3)
    metres = read_pfm(out / "coffee.jpg.depth.pfm")[0]
    inverse = 0.5 * rel + 0.4
    valid = inverse > 1e-3
    np.testing.assert_allclose(1 / metres[valid], inverse[valid], rtol=1e-3, atol=1e-5)  # compared as inverse depth
    assert np.isnan(metres[inverse <= -1e-3]).all()  # no positive inverse depth: NaN, never a negative distance
    heat = cv2.imread(str(out / "coffee.jpg.heatmap.png"))
    np.testing.assert_array_equal(heat, hm.predict(photo_file).heatmap)  # the heatmap is unchanged
    bad = run_cli("heatmap", str(photo_file), "-o", str(out), "--model", str(fixed_model), "--known-depths", str(csv),
                  "--save-depth", "png16")
    assert bad.returncode == 2 and "png16 depth is normalised per image and cannot hold metres" in bad.stderr


def test_point_cloud_of_a_flat_depth(tmp_path):
    """A flat metric depth of 2 m through known intrinsics: every vertex where the pinhole model
    puts it, read back with plyfile, a well-kept PLY reader."""
    from plyfile import PlyData

    depth = np.full((6, 8), 2.0, np.float32)
    image = np.zeros((6, 8, 3), np.uint8)
    image[..., 2] = 200  # red in BGR
    cam = Intrinsics(fx=4.0, fy=5.0, cx=3.5, cy=2.5)
    path = tmp_path / "flat.ply"
    path.write_bytes(ply_bytes(depth, image, cam, step=2, metric=True))
    ply = PlyData.read(str(path))
    v = ply["vertex"]
    assert ply.header.count("binary_little_endian") == 1 and "metres" in str(ply.header)
    assert len(v) == 3 * 4  # every 2nd pixel of 6x8
    u, row = np.meshgrid(np.arange(0, 8, 2), np.arange(0, 6, 2))
    np.testing.assert_allclose(v["z"], 2.0)
    np.testing.assert_allclose(v["x"], ((u - 3.5) * 2.0 / 4.0).ravel())
    np.testing.assert_allclose(v["y"], ((row - 2.5) * 2.0 / 5.0).ravel())
    assert set(v["red"]) == {200} and set(v["blue"]) == {0}
    with pytest.raises(PointCloudError, match="fx,fy,cx,cy"):
        Intrinsics.parse("1,2,3")
    with pytest.raises(PointCloudError, match="between 0 and 180"):
        Intrinsics.from_fov(8, 6, 200)


def test_point_cloud_from_the_cli_is_labelled_relative(tmp_path, fixed_model, photo_file):
    from plyfile import PlyData

    out = tmp_path / "out"
    r = run_cli("heatmap", str(photo_file), "-o", str(out), "--model", str(fixed_model), "--save-ply", "--ply-step", "4",
                "--fov", "70")
    assert r.returncode == 0, r.stderr
    ply = PlyData.read(str(out / "coffee.jpg.ply"))
    assert "relative" in str(ply.header) and "not metres" in str(ply.header)
    assert 0 < len(ply["vertex"]) <= 100 * 150 and np.isfinite(ply["vertex"]["z"]).all()


def test_video_normalize_option_changes_the_colours(tmp_path, fixed_model):
    from benchmarks.video_stability import synthetic_clip

    clip = tmp_path / "clip.mp4"
    frames = synthetic_clip(frames=10, size=(160, 120))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    for f in frames:
        writer.write(f)
    writer.release()
    heat = {}
    for mode in ("video", "frame"):
        out = tmp_path / mode
        r = run_cli("heatmap", str(clip), "-o", str(out), "--model", str(fixed_model), "--normalize", mode,
                    "--save-depth", "npy")
        assert r.returncode == 0, r.stderr
        cap = cv2.VideoCapture(str(out / "clip.mp4.heatmap.mp4"))
        heat[mode] = [cap.read()[1] for _ in range(10)]
        assert len(list((out / "clip.mp4.depth").glob("*.npy"))) == 10
    assert np.abs(heat["video"][5].astype(int) - heat["frame"][5]).mean() > 1


def test_encoding_modules_import_one_way():
    """png <- depth_files <- outputs: importing a lower one never brings in a higher one, so
    there is no import circle between them (depth_files and outputs used to import each
    other). In a fresh interpreter: what is imported is all that is loaded."""
    import subprocess
    import sys

    code = ("import sys, runtime.outputs.png as p; assert 'runtime.outputs.depth_files' not in sys.modules and 'runtime.outputs.render' not "
            "in sys.modules; import runtime.outputs.depth_files; assert 'runtime.outputs.render' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
