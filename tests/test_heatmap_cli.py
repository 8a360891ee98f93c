"""``midas-onnx heatmap`` end to end: folders, globs, bad files, no overwrites, video."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from runtime import DepthHeatmapper

from .conftest import REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console script path, as a user runs it (a real subprocess)."""
    return subprocess.run([sys.executable, "-m", "midas_onnx", *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture()
def photo_dir(tmp_path, photo_set):
    src = tmp_path / "in"
    (src / "x").mkdir(parents=True)
    (src / "y").mkdir()
    cv2.imwrite(str(src / "a.jpg"), photo_set["astronaut"][:, :, ::-1])
    cv2.imwrite(str(src / "a.png"), photo_set["coffee"][:, :, ::-1])  # same stem, other format
    cv2.imwrite(str(src / "x" / "c.jpg"), photo_set["chelsea"][:, :, ::-1])
    cv2.imwrite(str(src / "y" / "c.jpg"), photo_set["rocket"][:, :, ::-1])  # same name, other folder
    cv2.imwrite(str(src / "gray.png"), photo_set["camera"])
    (src / "empty.jpg").write_bytes(b"")
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (src / "notes.txt").write_text("ignored: not an image extension")
    return src


def test_folder_end_to_end(photo_dir, tmp_path, fixed_model, photo_set):
    out = tmp_path / "out"
    r = run_cli("heatmap", str(photo_dir), "-o", str(out), "--model", str(fixed_model), "--save-depth", "--overlay")
    assert r.returncode == 1  # two bad files
    assert f"error: {photo_dir / 'empty.jpg'}: empty file" in r.stderr
    assert f"error: {photo_dir / 'corrupt.png'}: not a decodable image" in r.stderr
    assert "5 done, 0 skipped (exist; --force to overwrite), 2 failed" in r.stdout
    assert "Traceback" not in r.stderr
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    names = ["a.jpg", "a.png", "gray.png", "x/c.jpg", "y/c.jpg"]
    assert made == sorted(f"{n}.{k}.png" for n in names for k in ("depth", "heatmap", "overlay"))
    # outputs are the runtime's results, at the photo's size
    heat = cv2.imread(str(out / "y" / "c.jpg.heatmap.png"))
    expected = DepthHeatmapper(fixed_model).heatmap(photo_dir / "y" / "c.jpg")
    assert heat.shape == photo_set["rocket"].shape
    np.testing.assert_array_equal(heat, expected)
    depth16 = cv2.imread(str(out / "a.png.depth.png"), cv2.IMREAD_UNCHANGED)
    assert depth16.dtype == np.uint16 and depth16.shape == photo_set["coffee"].shape[:2]


def test_existing_outputs_are_kept_unless_force(photo_dir, tmp_path, fixed_model):
    out = tmp_path / "out"
    target = out / "a.jpg.heatmap.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"precious")
    r = run_cli("heatmap", str(photo_dir / "a.jpg"), str(photo_dir / "a.png"), "-o", str(out), "--model", str(fixed_model))
    assert r.returncode == 0, r.stderr
    assert "1 done, 1 skipped" in r.stdout
    assert target.read_bytes() == b"precious"
    r = run_cli("heatmap", str(photo_dir / "a.jpg"), "-o", str(out), "--model", str(fixed_model), "--force")
    assert r.returncode == 0 and "1 done, 0 skipped" in r.stdout
    assert cv2.imread(str(target)).shape == (512, 512, 3)


def test_glob_and_unmatched_inputs(photo_dir, tmp_path, fixed_model):
    out = tmp_path / "out"
    r = run_cli("heatmap", str(photo_dir / "*" / "c.jpg"), str(photo_dir / "nothing*.jpg"), "-o", str(out), "--model", str(fixed_model))
    assert r.returncode == 1
    assert "nothing*.jpg: no such file, or no images matched" in r.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["x/c.jpg.heatmap.png", "y/c.jpg.heatmap.png"]


def test_missing_model_is_one_clean_line(photo_dir, tmp_path):
    r = run_cli("heatmap", str(photo_dir), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none.onnx"))
    assert r.returncode == 1
    assert "Error: model file not found" in r.stderr and "Traceback" not in r.stderr


def test_video_is_streamed_to_a_video(tmp_path, fixed_model, photo_set):
    src = tmp_path / "clip.mp4"
    frame = cv2.resize(photo_set["astronaut"][:, :, ::-1], (160, 120))
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (160, 120))
    for i in range(12):
        writer.write(np.roll(frame, 4 * i, axis=1))
    writer.release()
    out = tmp_path / "out"
    r = run_cli("heatmap", str(src), "-o", str(out), "--model", str(fixed_model))
    assert r.returncode == 0, r.stderr
    assert "12 done" in r.stdout
    cap = cv2.VideoCapture(str(out / "clip.mp4.heatmap.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(8.0)
    frames = 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        assert f.shape == (120, 160, 3)
        frames += 1
    assert frames == 12
    assert not list(out.glob("*.partial.mp4"))
