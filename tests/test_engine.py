"""The job engine without Ray: naming, plan, journal, resume and the settings check, through
``Job`` in-process and through the ``heatmap`` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import pytest

from runtime import DepthHeatmapper
from runtime.engine import Job, JobError, LocalRunner, OutputSpec, read_manifest
from runtime.engine.journal import JOURNAL
from runtime.engine.process import RAISE_ENV

from .conftest import REPO


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midas_onnx", *args], cwd=REPO, capture_output=True, text=True,
                          env=env)


@pytest.fixture()
def photos(tmp_path, photo_set):
    src = tmp_path / "in"
    (src / "x").mkdir(parents=True)
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]):
        cv2.imwrite(str(src / ("x" if i % 2 else "") / f"{name}.jpg"), cv2.resize(photo_set[name][:, :, ::-1], (96, 72)))
    return src


@pytest.fixture(scope="module")
def hm(fixed_model):
    return DepthHeatmapper(fixed_model, threads=1)


def run_job(hm, inputs, out, spec=None, force=False, stop_after=None) -> tuple[Job, list[dict]]:
    """A job in-process; ``stop_after`` rows, it is interrupted as Ctrl-C or a kill would."""
    spec = spec or OutputSpec.make()
    job = Job.prepare([str(i) for i in inputs], str(out), str(hm.model_path), spec, force=force)
    rows = []

    def on_row(row):
        rows.append(row)
        if stop_after is not None and len(rows) >= stop_after:
            raise KeyboardInterrupt

    summary = job.run(LocalRunner(hm, spec, job.store, job.digest, workers=1), on_row)
    assert summary.interrupted == (stop_after is not None)
    return job, rows


def test_names_mirror_the_root_and_keep_the_full_name(hm, photos, tmp_path):
    job, rows = run_job(hm, [photos], tmp_path / "out", OutputSpec.make(depth="npy", overlay=True))
    got = {r["relative"]: r["outputs"] for r in rows}
    out = str((tmp_path / "out").resolve())
    assert got["x/coffee.jpg"] == [f"{out}/x/coffee.jpg.heatmap.png", f"{out}/x/coffee.jpg.depth.npy",
                                   f"{out}/x/coffee.jpg.overlay.png"]
    assert json.loads((tmp_path / "out" / "job.json").read_text())["inputs_root"] == str(photos)


def test_a_second_input_root_into_one_output_is_refused(hm, photos, tmp_path, photo_set):
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "astronaut.jpg"), photo_set["coffee"][:72, :96, ::-1])  # same name, other photo
    run_job(hm, [photos], tmp_path / "out")
    with pytest.raises(JobError, match=r"holds outputs made with other settings \(inputs_root .*in -> .*other\)"):
        Job.prepare([str(other)], str(tmp_path / "out"), str(hm.model_path), OutputSpec.make())


def test_done_rows_and_their_outputs_are_the_truth_for_resume(hm, photos, tmp_path):
    out = tmp_path / "out"
    run_job(hm, [photos], out)
    (out / "astronaut.jpg.heatmap.png").write_bytes(b"")  # 0 bytes: redone
    (out / "x" / "coffee.jpg.heatmap.png").unlink()  # missing: redone
    job = Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make())
    assert sorted(i.relative for i in job.todo) == ["astronaut.jpg", "x/coffee.jpg"]
    assert len(job.skipped) == 2


def test_an_interrupted_forced_rerun_never_passes_old_outputs_off_as_new(hm, photos, tmp_path):
    out = tmp_path / "out"
    run_job(hm, [photos], out, OutputSpec.make(colormap="inferno"))
    turbo = OutputSpec.make(colormap="turbo")
    run_job(hm, [photos], out, turbo, force=True, stop_after=1)  # killed after one input
    job = Job.prepare([str(photos)], str(out), str(hm.model_path), turbo)  # no --force now: same settings
    assert len(job.skipped) == 1 and len(job.todo) == 3  # the three inferno outputs are redone
    job.run(LocalRunner(hm, turbo, job.store, job.digest, workers=2))
    for photo in sorted(photos.rglob("*.jpg")):
        rel = photo.relative_to(photos)
        want = DepthHeatmapper(hm.model_path, colormap="turbo").heatmap(photo)
        assert (cv2.imread(str(out / f"{rel}.heatmap.png")) == want).all(), rel


def test_the_manifest_holds_one_row_per_input_after_a_killed_rerun(hm, photos, tmp_path):
    out = tmp_path / "out"
    run_job(hm, [photos], out, stop_after=2)
    (out / "astronaut.jpg.heatmap.png").unlink(missing_ok=True)
    run_job(hm, [photos], out, force=True, stop_after=3)
    rows = read_manifest(str(out))
    assert len(rows) == len({r["input"] for r in rows}) >= 3
    assert not (out / JOURNAL).exists()  # folded into the manifest when the job stopped
    job, _ = run_job(hm, [photos], out)
    rows = read_manifest(str(out))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}


def test_a_journal_left_by_a_killed_driver_is_folded_in(hm, photos, tmp_path):
    out = tmp_path / "out"
    job, rows = run_job(hm, [photos], out)
    (out / "manifest.jsonl").write_text("")  # as if killed before the first compaction ...
    (out / JOURNAL).write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"input": "cut sh')  # ... mid-line
    again = Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make())
    assert len(again.skipped) == 4 and not again.todo


def test_files_the_user_had_are_kept_unless_forced(hm, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "astronaut.jpg.heatmap.png").write_bytes(b"precious")
    job, rows = run_job(hm, [photos], out)
    assert (out / "astronaut.jpg.heatmap.png").read_bytes() == b"precious"
    assert [s["note"] for s in job.skipped] == ["exists, not written by this job (--force to overwrite)"]
    run_job(hm, [photos], out, force=True)
    assert cv2.imread(str(out / "astronaut.jpg.heatmap.png")).shape == (72, 96, 3)


def test_a_library_exception_is_the_rows_error(photos, tmp_path, fixed_model):
    env = {**os.environ, RAISE_ENV: "chelsea"}
    r = run_cli("heatmap", str(photos), "-o", str(tmp_path / "out"), "--model", str(fixed_model), env=env)
    assert r.returncode == 1 and "3 done, 0 skipped, 1 failed" in r.stdout
    assert f"error: {photos / 'chelsea.jpg'}: RuntimeError: fault injected for tests" in r.stderr
    assert "Traceback" not in r.stderr  # it is in the log file the summary names
    log = r.stdout.split("tracebacks: ")[1].strip()
    assert "Traceback" in open(log).read() and "fault injected" in open(log).read()
    row = {r["relative"]: r for r in read_manifest(str(tmp_path / "out"))}["chelsea.jpg"]
    assert row["status"] == "failed" and "RuntimeError" in row["error"]


def test_driver_errors_are_one_line(photos, tmp_path, fixed_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "job.json").write_text("{not json")
    r = run_cli("heatmap", str(photos), "-o", str(out), "--model", str(fixed_model))
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
        f"error: {out / 'job.json'}: not a job file midas-onnx wrote")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    r = run_cli("heatmap", str(photos), "-o", str(blocker / "out"), "--model", str(fixed_model))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {blocker / 'out'}/") and "(Not a directory)" in r.stderr


def test_heatmap_writes_a_manifest_and_refuses_other_settings(photos, tmp_path, fixed_model):
    out = tmp_path / "out"
    assert run_cli("heatmap", str(photos), "-o", str(out), "--model", str(fixed_model)).returncode == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["relative"] for r in rows) == ["astronaut.jpg", "chelsea.jpg", "x/coffee.jpg", "x/rocket.jpg"]
    assert {r["status"] for r in rows} == {"done"} and all(r["pid"] > 0 and r["host"] for r in rows)
    r = run_cli("heatmap", str(photos), "-o", str(out), "--model", str(fixed_model), "--save-depth", "npy")
    assert r.returncode == 1
    assert "holds outputs made with other settings (outputs.depth null -> npy)" in r.stderr and "--force" in r.stderr
    again = run_cli("heatmap", str(photos), "-o", str(out), "--model", str(fixed_model))
    assert again.returncode == 0 and "0 done, 4 skipped, 0 failed" in again.stdout


def test_ctrl_c_ends_heatmap_with_a_summary_and_a_rerun_resumes(tmp_path, fixed_model, photo_set):
    import signal
    import time

    src = tmp_path / "many"
    src.mkdir()
    for i in range(150):
        cv2.imwrite(str(src / f"{i:03d}.jpg"), cv2.resize(photo_set["astronaut"][:, :, ::-1], (320, 240)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "midas_onnx", "heatmap", str(src), "-o", str(out), "--model",
                             str(fixed_model)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(out.glob("*.heatmap.png"))) < 5:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "interrupted: rerun the same command to resume" in stdout
    rows = read_manifest(str(out))
    assert 5 <= len(rows) < 150 and len({r["input"] for r in rows}) == len(rows)
    resumed = run_cli("heatmap", str(src), "-o", str(out), "--model", str(fixed_model))
    assert resumed.returncode == 0 and f"{150 - len(rows)} done, {len(rows)} skipped" in resumed.stdout


def test_format_choice_names_and_encodes_the_files(photos, tmp_path, fixed_model):
    out = tmp_path / "out"
    r = run_cli("heatmap", str(photos / "astronaut.jpg"), "-o", str(out), "--model", str(fixed_model),
                "--format", "jpg", "--overlay")
    assert r.returncode == 0, r.stderr
    heat = out / "astronaut.jpg.heatmap.jpg"
    assert heat.read_bytes()[:3] == b"\xff\xd8\xff" and (out / "astronaut.jpg.overlay.jpg").is_file()
    want = DepthHeatmapper(fixed_model).heatmap(photos / "astronaut.jpg")
    assert heat.read_bytes() == cv2.imencode(".jpg", want, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    r = run_cli("heatmap", str(photos / "astronaut.jpg"), "-o", str(out), "--model", str(fixed_model))
    assert r.returncode == 1 and "(outputs.image_format jpg -> png; outputs.overlay true -> false)" in r.stderr
