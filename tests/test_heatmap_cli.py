"""``midas-onnx heatmap`` end to end: folders, globs, bad files, no overwrites, video. Run
in-process (click's runner: the command's own entry point, exit status, stdout and stderr)
where a separate process proves nothing more; Ctrl-C and kill -9 are in
tests/test_engine_interrupt.py, on real processes."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from runtime import DepthHeatmapper

from .conftest import REPO
from .test_engine import cli


def run_cli(*args: str) -> SimpleNamespace:
    """``midas-onnx ARGS`` in this process, with a subprocess's names for what it gives."""
    r = cli(*args)
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr, exception=r.exception)


def run_process(*args: str) -> subprocess.CompletedProcess:
    """A real process: what native libraries write to file descriptor 2 is seen too."""
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
    assert "5 done, 0 skipped, 2 failed" in r.stdout
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


def test_glob_missing_path_and_empty_folder_each_say_which(photo_dir, tmp_path, fixed_model):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    r = run_cli("heatmap", str(photo_dir / "*" / "c.jpg"), str(photo_dir / "nothing*.jpg"), str(tmp_path / "absent.jpg"),
                str(empty), "-o", str(out), "--model", str(fixed_model))
    assert r.returncode == 1
    assert f"error: {photo_dir / 'nothing*.jpg'}: no files match this pattern" in r.stderr
    assert f"error: {tmp_path / 'absent.jpg'}: no such file or folder" in r.stderr
    assert f"error: {empty}: folder has no images or videos (" in r.stderr
    # the summary counts files: two photos done, and the three bad specs are not "failed images"
    assert "2 done, 0 skipped, 0 failed" in r.stdout
    # names below the folders given (the pattern's folder, the empty folder), not the files found:
    # photos added to empty/ later are new inputs of the same job
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["in/x/c.jpg.heatmap.png",
                                                                           "in/y/c.jpg.heatmap.png"]


def test_nothing_to_do_is_an_error(tmp_path, fixed_model):
    r = run_cli("heatmap", str(tmp_path / "absent"), "-o", str(tmp_path / "out"), "--model", str(fixed_model))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"error: no input files; {tmp_path / 'absent'}: no such file or folder"


def test_output_folder_inside_the_input_folder_is_never_read(photo_dir, tmp_path, fixed_model):
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.jpg").write_bytes((photo_dir / "a.jpg").read_bytes())
    out = small / "heatmaps"
    first = run_cli("heatmap", str(small), "-o", str(out), "--model", str(fixed_model))
    assert first.returncode == 0 and "1 done, 0 skipped" in first.stdout
    second = run_cli("heatmap", str(small), "-o", str(out), "--model", str(fixed_model))
    assert second.returncode == 0 and "0 done, 1 skipped" in second.stdout
    assert [p.name for p in out.rglob("*.png")] == ["a.jpg.heatmap.png"]


def jpeg_bytes(rgb, **params) -> bytes:
    flags = [v for kv in params.items() for v in (getattr(cv2, kv[0]), kv[1])]
    return cv2.imencode(".jpg", rgb[:, :, ::-1], flags)[1].tobytes()


def test_jpegs_with_data_after_their_end_are_photos(tmp_path, fixed_model, photo_set):
    """Motion Photos carry a video after the JPEG's end-of-image marker; some cameras pad
    with zeros. Both are complete photos. A JPEG cut short is still refused, even when an
    EXIF thumbnail before the image data has an end marker of its own."""
    base = jpeg_bytes(photo_set["coffee"])
    progressive = jpeg_bytes(photo_set["coffee"], IMWRITE_JPEG_PROGRESSIVE=1)
    (tmp_path / "motion.jpg").write_bytes(base + b"\x00\x00\x00\x1cftypmp42" + bytes(range(256)) * 200)
    (tmp_path / "padded.jpg").write_bytes(progressive + b"\x00" * 4096)
    thumb = jpeg_bytes(photo_set["coffee"][::8, ::8])
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumb
    with_thumb = base[:2] + app1 + base[2:]
    (tmp_path / "cut_with_thumbnail.jpg").write_bytes(with_thumb[: len(with_thumb) * 2 // 3])
    (tmp_path / "cut_progressive.jpg").write_bytes(progressive[: len(progressive) // 2])
    out = tmp_path / "out"
    r = run_cli("heatmap", str(tmp_path), "-o", str(out), "--model", str(fixed_model))
    assert r.returncode == 1
    assert "2 done, 0 skipped, 2 failed" in r.stdout
    for name in ("cut_with_thumbnail.jpg", "cut_progressive.jpg"):
        assert f"error: {tmp_path / name}: truncated JPEG" in r.stderr
    heat = cv2.imread(str(out / "motion.jpg.heatmap.png"))
    np.testing.assert_array_equal(heat, DepthHeatmapper(fixed_model).heatmap(base))


def test_missing_model_is_one_clean_line(photo_dir, tmp_path):
    r = run_cli("heatmap", str(photo_dir), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none.onnx"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: model file not found")
    assert "Traceback" not in r.stderr


def test_missing_int8_model_says_which_command_makes_it(photo_dir, tmp_path):
    r = run_cli("heatmap", str(photo_dir), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m.int8.onnx"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: model file not found: {tmp_path / 'm.int8.onnx'}. Make it with `midas-onnx quantize --int8`.")


def write_video(path, photo, frames: int = 12, fourcc: str = "mp4v") -> None:
    frame = cv2.resize(photo[:, :, ::-1], (160, 120))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 8.0, (160, 120))
    for i in range(frames):
        writer.write(np.roll(frame, 4 * i, axis=1))
    writer.release()


def read_frames(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


def test_video_heatmap_overlay_and_lossless_depth(tmp_path, fixed_model, photo_set):
    src = tmp_path / "clip.mp4"
    write_video(src, photo_set["astronaut"])
    out = tmp_path / "out"
    r = run_cli("heatmap", str(src), "-o", str(out), "--model", str(fixed_model), "--overlay", "--save-depth")
    assert r.returncode == 0, r.stderr
    assert "1 done (1 videos, 12 frames), 0 skipped, 0 failed" in r.stdout
    assert cv2.VideoCapture(str(out / "clip.mp4.heatmap.mp4")).get(cv2.CAP_PROP_FPS) == pytest.approx(8.0)
    heat, over = read_frames(out / "clip.mp4.heatmap.mp4"), read_frames(out / "clip.mp4.overlay.mp4")
    assert len(heat) == len(over) == 12 and heat[0].shape == over[0].shape == (120, 160, 3)
    assert np.abs(heat[0].astype(int) - over[0]).mean() > 5  # two different videos
    # lossless depth: 16-bit PNG frames + each frame's range give back predict().depth
    depth_dir = out / "clip.mp4.depth"
    pngs = sorted(depth_dir.glob("*.png"))
    rows = (depth_dir / "frames.csv").read_text().splitlines()
    assert len(pngs) == 12 and rows[0] == "frame,lo,hi" and len(rows) == 13
    first_frame = read_frames(src)[0]
    want = DepthHeatmapper(fixed_model).predict(first_frame).depth
    _, lo, hi = (float(v) for v in rows[1].split(","))
    got = lo + cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535 * (hi - lo)
    assert np.abs(got - want).max() <= (hi - lo) / 65535
    assert not [p for p in out.iterdir() if ".partial" in p.name]


def test_a_video_that_fails_partway_leaves_nothing_and_counts_as_failed(tmp_path, fixed_model, photo_set):
    good = tmp_path / "good.avi"
    write_video(good, photo_set["astronaut"], frames=30, fourcc="MJPG")
    data = good.read_bytes()
    (tmp_path / "clips").mkdir()
    bad = tmp_path / "clips" / "bad.avi"
    bad.write_bytes(data[: len(data) * 6 // 10])  # cut short: its header still says 30 frames
    (tmp_path / "clips" / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100)
    out = tmp_path / "out"
    for _ in range(2):  # and a rerun does not skip it: there is nothing under the final name
        r = run_process("heatmap", str(tmp_path / "clips"), "-o", str(out), "--model", str(fixed_model), "--save-depth")
        assert r.returncode == 1
        assert "0 done, 0 skipped, 2 failed" in r.stdout
        assert f"error: {bad}: decoding stopped at frame" in r.stderr
        assert f"error: {tmp_path / 'clips' / 'junk.mp4'}: cannot be opened as a video" in r.stderr
        assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.name[0] != ".") == ["job.json",
                                                                                               "manifest.jsonl"]
        assert f"{bad}: decoding stopped at frame 18 of 30" in r.stderr
        # FFmpeg's own complaints ("[mjpeg @ 0x55d...] overread 8", "moov atom not found") do not leak
        assert " @ 0x" not in r.stderr and "moov atom" not in r.stderr, r.stderr
