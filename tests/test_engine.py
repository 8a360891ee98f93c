"""The job engine without Ray: naming, plan, journal, resume, the settings check and the
OUTPUT lock, through ``Job`` in-process and through the ``heatmap`` command in-process
(CliRunner: the same click entry point a user runs, without a Python start-up per call).

Most tests run the one-op model of ``benchmarks/engine_scale.py`` (ReduceMean over the
channels, 32x32): the engine's logic does not need a real network, and it costs nothing."""

from __future__ import annotations

import json
import os
import sqlite3

import cv2
import numpy as np
import pytest

from runtime import DepthHeatmapper
from runtime.engine import Job, JobError, LocalRunner, OutputSpec, read_manifest
from runtime.engine.process import RAISE_ENV


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from benchmarks.engine_scale import make_model

    return make_model(tmp_path_factory.mktemp("tiny") / "reduce_mean_32.onnx")


def cli(*args: str, env: dict | None = None):
    """``midas-onnx ARGS`` in this process: exit code, stdout and stderr as a user sees them."""
    from click.testing import CliRunner

    from midas_onnx.cli import main

    return CliRunner(env=env).invoke(main, [str(a) for a in args], prog_name="midas-onnx")


@pytest.fixture()
def photos(tmp_path, photo_set):
    src = tmp_path / "in"
    (src / "x").mkdir(parents=True)
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]):
        cv2.imwrite(str(src / ("x" if i % 2 else "") / f"{name}.jpg"), cv2.resize(photo_set[name][:, :, ::-1], (96, 72)))
    return src


@pytest.fixture(scope="module")
def hm(tiny_model):
    return DepthHeatmapper(tiny_model, threads=1)


def run_job(hm, inputs, out, spec=None, force=False, stop_after=None, hard=False) -> tuple[Job, list[dict]]:
    """A job in-process; after ``stop_after`` rows it is stopped as Ctrl-C stops it, or with
    ``hard`` as a second Ctrl-C does (what runs is abandoned)."""
    spec = spec or OutputSpec.make()
    job = Job.prepare([str(i) for i in inputs], str(out), str(hm.model_path), spec, force=force)
    rows = []

    def on_row(row):
        rows.append(row)
        if stop_after is not None and len(rows) >= stop_after:
            if hard:
                raise KeyboardInterrupt
            job.stop()

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


def test_the_root_is_the_folder_given_not_the_files_found(hm, tmp_path, photo_set):
    """Every photo in photos/2023 so far: the root is still photos/, so a photo added in
    photos/2024 later is a new input of the same job, not a job refused for its root."""
    photos = tmp_path / "photos"
    (photos / "2023").mkdir(parents=True)
    cv2.imwrite(str(photos / "2023" / "a.jpg"), photo_set["coffee"][:72, :96, ::-1])
    out = tmp_path / "out"
    run_job(hm, [photos], out)
    assert json.loads((out / "job.json").read_text())["inputs_root"] == str(photos)
    assert (out / "2023" / "a.jpg.heatmap.png").is_file()
    (photos / "2024").mkdir()
    cv2.imwrite(str(photos / "2024" / "b.jpg"), photo_set["chelsea"][:72, :96, ::-1])
    job, rows = run_job(hm, [photos], out)
    assert [r["relative"] for r in rows] == ["2024/b.jpg"] and job.skipped == 1


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
    with Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make()) as job:
        assert sorted(i.relative for i in job.todo) == ["astronaut.jpg", "x/coffee.jpg"] and len(job.todo) == 2
        assert job.skipped == 2


def test_an_interrupted_forced_rerun_never_passes_old_outputs_off_as_new(hm, photos, tmp_path):
    out = tmp_path / "out"
    run_job(hm, [photos], out, OutputSpec.make(colormap="inferno"))
    turbo = OutputSpec.make(colormap="turbo")
    run_job(hm, [photos], out, turbo, force=True, stop_after=1, hard=True)  # abandoned after one input
    job = Job.prepare([str(photos)], str(out), str(hm.model_path), turbo)  # no --force now: same settings
    assert job.skipped == 1 and len(job.todo) == 3  # the three inferno outputs are redone
    job.run(LocalRunner(hm, turbo, job.store, job.digest, workers=2))
    for photo in sorted(photos.rglob("*.jpg")):
        rel = photo.relative_to(photos)
        want = DepthHeatmapper(hm.model_path, colormap="turbo").heatmap(photo)
        assert (cv2.imread(str(out / f"{rel}.heatmap.png")) == want).all(), rel


def test_a_stopped_job_journals_what_finished_and_exports_the_manifest(hm, photos, tmp_path):
    out = tmp_path / "out"
    job, rows = run_job(hm, [photos], out, stop_after=1)  # Ctrl-C: what runs finishes and is recorded
    recorded = read_manifest(str(out))
    assert len(recorded) == len(rows) >= 1 and {r["input"] for r in recorded} == {r["input"] for r in rows}
    written = {str(p) for p in out.rglob("*.heatmap.png")}
    assert written == {o for r in recorded for o in r["outputs"]}  # every output written has its row
    job, again = run_job(hm, [photos], out)
    assert len(again) == 4 - len(rows) and len(read_manifest(str(out))) == 4


def test_rows_committed_before_a_kill_are_the_truth_even_without_a_manifest(hm, photos, tmp_path):
    out = tmp_path / "out"
    run_job(hm, [photos], out)
    (out / "manifest.jsonl").unlink()  # as if killed before the export
    with Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make()) as job:
        assert job.skipped == 4 and not len(job.todo)
        summary = job.run(LocalRunner(hm, job.spec, job.store, job.digest))
    assert summary.skipped == 4 and len(read_manifest(str(out))) == 4  # exported again


def test_an_earlier_versions_manifest_and_journal_are_imported(hm, photos, tmp_path):
    out = tmp_path / "out"
    job, rows = run_job(hm, [photos], out)
    for suffix in ("", "-wal", "-shm"):
        (out / f".journal.sqlite{suffix}").unlink(missing_ok=True)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (out / ".manifest.journal").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]) + '{"input": "cut sh')
    with Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make()) as job:
        assert job.skipped == 4 and not len(job.todo)
    assert not (out / ".manifest.journal").exists()


def test_a_failed_manifest_export_loses_no_row(hm, photos, tmp_path):
    """The final write fails (here: a folder in the manifest's place): the rows stay in the
    journal, the summary says so, and the next run skips every input done."""
    out = tmp_path / "out"
    (out / "manifest.jsonl").mkdir(parents=True)
    job = Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make())
    summary = job.run(LocalRunner(hm, job.spec, job.store, job.digest))
    assert summary.done == 4 and "manifest.jsonl: cannot be written" in summary.manifest_error
    assert ".journal.sqlite and the next run exports them" in summary.manifest_error
    (out / "manifest.jsonl").rmdir()
    job, rows = run_job(hm, [photos], out)
    assert rows == [] and job.skipped == 4 and len(read_manifest(str(out))) == 4


def test_files_the_user_had_are_kept_on_every_rerun_unless_forced(hm, photos, tmp_path):
    """"Kept" is a row status: the second plain rerun (OUTPUT now has job.json) keeps the
    user's file as the first did, and only --force overwrites it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "astronaut.jpg.heatmap.png").write_bytes(b"precious")
    for _ in range(2):
        job, rows = run_job(hm, [photos], out)
        assert (out / "astronaut.jpg.heatmap.png").read_bytes() == b"precious"
        assert job.kept == 1
    status = {r["relative"]: r["status"] for r in read_manifest(str(out))}
    assert status == {"astronaut.jpg": "kept", "chelsea.jpg": "done", "x/coffee.jpg": "done", "x/rocket.jpg": "done"}
    run_job(hm, [photos], out, force=True)
    assert cv2.imread(str(out / "astronaut.jpg.heatmap.png")).shape == (72, 96, 3)
    assert {r["status"] for r in read_manifest(str(out))} == {"done"}


def test_errors_of_inputs_sent_as_bytes_name_the_input(hm, tmp_path):
    """Inputs read by the engine (URIs) or sent as bytes (bulk --ship-bytes) are decoded
    from bytes: their errors name the input, never "image"."""
    import numpy as np

    from runtime.outputs.depth_files import pfm_bytes
    from runtime.engine import Item, Store
    from runtime.engine.process import process

    store = Store(str(tmp_path / "out"))
    item = Item("s3://bucket/in/float.pfm", "float.pfm", False, {"heatmap": store.join("float.pfm.heatmap.png")})
    data = pfm_bytes(np.linspace(0, 5, 32 * 48, dtype=np.float32).reshape(32, 48))  # floats beyond [0, 1]
    row = process(hm, item, OutputSpec.make(), store, "digest", data)
    assert row["status"] == "failed" and row["error"].startswith("s3://bucket/in/float.pfm: "), row["error"]


def test_one_job_per_output_and_a_killed_job_leaves_no_lock(hm, photos, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    with Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make(), command="midas-onnx heatmap"):
        with pytest.raises(JobError, match=rf"^{out} is in use by midas-onnx heatmap \(pid {os.getpid()} on "):
            Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from runtime.engine import Job, OutputSpec; "
         "job = Job.prepare([sys.argv[1]], sys.argv[2], sys.argv[3], OutputSpec.make(), command='holder'); "
         "print('locked', flush=True); time.sleep(600)", str(photos), str(out), str(hm.model_path)],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(JobError, match=rf"in use by holder \(pid {holder.pid} on "):
            Job.prepare([str(photos)], str(out), str(hm.model_path), OutputSpec.make())
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # its own session: only what this test started
        holder.wait()
    job, rows = run_job(hm, [photos], out)  # the kernel dropped the lock with the process
    assert len(rows) == 4


def test_a_library_exception_is_the_rows_error(photos, tmp_path, tiny_model):
    r = cli("heatmap", photos, "-o", tmp_path / "out", "--model", tiny_model, env={RAISE_ENV: "chelsea"})
    assert r.exit_code == 1 and "3 done, 0 skipped, 1 failed" in r.stdout
    assert f"error: {photos / 'chelsea.jpg'}: RuntimeError: fault injected for tests" in r.stderr
    assert "Traceback" not in r.stderr  # it is in the log file the summary names
    log = r.stdout.split("tracebacks: ")[1].strip()
    assert "Traceback" in open(log).read() and "fault injected" in open(log).read()
    row = {r["relative"]: r for r in read_manifest(str(tmp_path / "out"))}["chelsea.jpg"]
    assert row["status"] == "failed" and "RuntimeError" in row["error"]


def test_driver_errors_are_one_line(photos, tmp_path, tiny_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "job.json").write_text("{not json")
    r = cli("heatmap", photos, "-o", out, "--model", tiny_model)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].startswith(
        f"error: {out / 'job.json'}: not a job file midas-onnx wrote")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    r = cli("heatmap", photos, "-o", blocker / "out", "--model", tiny_model)
    assert r.exit_code == 1 and r.exception.__class__ is SystemExit
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {blocker / 'out'}/") and "(Not a directory)" in r.stderr


@pytest.mark.parametrize("command", ["heatmap", "bulk"])
def test_an_unknown_colormap_is_a_usage_error_without_a_traceback(command, photos, tmp_path, tiny_model):
    args = [photos, "-o", tmp_path / "out"] if command == "heatmap" else [photos, tmp_path / "out"]
    r = cli(command, *args, "--model", tiny_model, "--colormap", "nope")
    assert r.exit_code == 2 and r.exception.__class__ is SystemExit, r.exception
    assert r.stderr.splitlines()[-1].startswith("error: unknown colormap 'nope'; choose from autumn, bone")
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()


def test_a_known_points_csv_with_a_bom_or_latin1_bytes(photos, tmp_path, tiny_model):
    """As spreadsheets save them: a byte-order mark is read; Latin-1 bytes are one line, not
    a traceback, before any input is read."""
    csv = tmp_path / "points.csv"
    csv.write_bytes(b"\xef\xbb\xbfx,y,depth_m\n10,10,3.0\n20,20,3.0\n30,5,3.0\n")
    r = cli("heatmap", photos, "-o", tmp_path / "out", "--model", tiny_model, "--known-depths", csv)
    assert r.exit_code == 0, r.output
    csv.write_bytes("x,y,depth_m\n10,10,3.0\n20,20,3.0\n30,5,3.0\n# mesuré\n".encode("latin-1"))
    r = cli("heatmap", photos, "-o", tmp_path / "out2", "--model", tiny_model, "--known-depths", csv)
    assert r.exit_code == 1 and r.exception.__class__ is SystemExit, r.exception
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"error: {csv}: not UTF-8 text")
    assert not (tmp_path / "out2").exists()


def test_heatmap_runs_where_the_os_has_no_cpu_affinity(photos, tmp_path, tiny_model, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    r = cli("heatmap", photos, "-o", tmp_path / "out", "--model", tiny_model)
    assert r.exit_code == 0, r.exception
    assert f"{os.cpu_count()} worker" in r.stderr and "4 done" in r.stdout


def test_heatmap_writes_a_manifest_and_refuses_other_settings(photos, tmp_path, tiny_model):
    out = tmp_path / "out"
    assert cli("heatmap", photos, "-o", out, "--model", tiny_model).exit_code == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["relative"] for r in rows) == ["astronaut.jpg", "chelsea.jpg", "x/coffee.jpg", "x/rocket.jpg"]
    assert {r["status"] for r in rows} == {"done"} and all(r["pid"] > 0 and r["host"] for r in rows)
    r = cli("heatmap", photos, "-o", out, "--model", tiny_model, "--save-depth", "npy")
    assert r.exit_code == 1
    assert "holds outputs made with other settings (outputs.depth null -> npy)" in r.stderr and "--force" in r.stderr
    again = cli("heatmap", photos, "-o", out, "--model", tiny_model)
    assert again.exit_code == 0 and "0 done, 4 skipped, 0 failed" in again.stdout


def test_format_choice_names_and_encodes_the_files(photos, tmp_path, tiny_model):
    out = tmp_path / "out"
    r = cli("heatmap", photos / "astronaut.jpg", "-o", out, "--model", tiny_model, "--format", "jpg", "--overlay")
    assert r.exit_code == 0, r.output
    heat = out / "astronaut.jpg.heatmap.jpg"
    assert heat.read_bytes()[:3] == b"\xff\xd8\xff" and (out / "astronaut.jpg.overlay.jpg").is_file()
    want = DepthHeatmapper(tiny_model).heatmap(photos / "astronaut.jpg")
    assert heat.read_bytes() == cv2.imencode(".jpg", want, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    r = cli("heatmap", photos / "astronaut.jpg", "-o", out, "--model", tiny_model)
    assert r.exit_code == 1 and "(outputs.image_format jpg -> png; outputs.overlay true -> false)" in r.stderr


def test_the_journal_is_sqlite_in_wal_mode_with_one_row_per_input(hm, photos, tmp_path):
    out = tmp_path / "out"
    run_job(hm, [photos], out)
    run_job(hm, [photos], out, force=True)
    db = sqlite3.connect(out / ".journal.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("SELECT count(*), count(DISTINCT input) FROM rows").fetchone() == (4, 4)
    db.close()


def write_video(path, frames: int, size=(64, 48), fourcc: str = "MJPG") -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    base = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    for i in range(frames):
        writer.write(np.roll(base, i, axis=1))
    writer.release()


def test_video_rows_carry_their_frame_count_as_a_field(hm, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_video(src / "clip.avi", 7)
    out = tmp_path / "out"
    job = Job.prepare([str(src)], str(out), str(hm.model_path), OutputSpec.make())
    summary = job.run(LocalRunner(hm, job.spec, job.store, job.digest))
    row = read_manifest(str(out))[0]
    assert row["frames"] == 7 and row["status"] == "done" and "note" not in row
    assert (summary.videos, summary.frames) == (1, 7)
