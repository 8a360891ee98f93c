"""``bulk`` and ``heatmap`` against an object store: a real S3 server (moto) on loopback.

What object stores change: outputs are single PUTs (no temp objects left, ever), paths keep
their scheme in the manifest, existence is one streamed listing, the journal is a local
state file (named in the summary) and the manifest is uploaded even when the job stops
with an error."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from .conftest import REPO
from .test_engine import tiny_model  # noqa: F401 - the one-op model (a session fixture)

pytest.importorskip("moto.server", reason="moto[server] is in the test extra")


@pytest.fixture(scope="module")
def s3(photo_set, tmp_path_factory):
    import boto3

    from benchmarks.engine_scale import local_s3

    with local_s3() as env:
        env["MIDAS_ONNX_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket="photos")
        for name in ("astronaut", "coffee", "chelsea"):
            body = cv2.imencode(".jpg", cv2.resize(photo_set[name][:, :, ::-1], (120, 90)))[1].tobytes()
            client.put_object(Bucket="photos", Key=f"in/sub/{name}.jpg", Body=body)
        client.put_object(Bucket="photos", Key="in/broken.jpg", Body=b"\xff\xd8\xff not a photo")
        yield client, env


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="photos", Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midas_onnx", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)


def test_bulk_reads_and_writes_s3_and_resumes_from_one_listing(s3, tiny_model):  # noqa: F811
    client, env = s3
    r = cli(env, "bulk", "s3://photos/in", "s3://photos/out", "--model", str(tiny_model), "--save-depth", "npy")
    assert r.returncode == 1, r.stderr  # the broken photo
    assert "3 done, 0 skipped, 1 failed" in r.stdout
    made = keys(client, "out/")
    assert "out/sub/coffee.jpg.heatmap.png" in made and "out/sub/coffee.jpg.depth.npy" in made
    assert not [k for k in made if k.endswith(".tmp") or "/." in k]  # one PUT per output: no temp objects
    rows = [json.loads(line) for line in client.get_object(Bucket="photos", Key="out/manifest.jsonl")["Body"]
            .read().decode().splitlines()]
    done = {r["relative"]: r for r in rows if r["status"] == "done"}
    assert done["sub/coffee.jpg"]["outputs"] == ["s3://photos/out/sub/coffee.jpg.heatmap.png",
                                                  "s3://photos/out/sub/coffee.jpg.depth.npy"]
    assert done["sub/coffee.jpg"]["input"] == "s3://photos/in/sub/coffee.jpg"
    heat = client.get_object(Bucket="photos", Key="out/sub/coffee.jpg.heatmap.png")["Body"].read()
    import numpy as np

    assert cv2.imdecode(np.frombuffer(heat, np.uint8), cv2.IMREAD_COLOR).shape == (90, 120, 3)
    again = cli(env, "bulk", "s3://photos/in", "s3://photos/out", "--model", str(tiny_model), "--save-depth", "npy")
    assert "0 done, 3 skipped, 1 failed" in again.stdout


def test_a_job_that_stops_with_an_error_still_uploads_its_manifest(s3, tiny_model):  # noqa: F811
    client, env = s3
    env = {**env, "MIDAS_ONNX_TEST_CRASH_ON": "__init__"}  # no worker can start
    r = cli(env, "bulk", "s3://photos/in", "s3://photos/stopped", "--model", str(tiny_model))
    assert r.returncode == 2 and r.stderr.startswith("error: workers could not start")
    assert keys(client, "stopped/") == ["stopped/job.json", "stopped/manifest.jsonl"]


def in_process(env, *args):
    from .test_engine import cli as run

    return run(*args, env={k: v for k, v in env.items() if k.startswith(("AWS_", "MIDAS_ONNX_"))})


def test_heatmap_writes_to_s3_and_names_its_journal(s3, tiny_model):
    client, env = s3
    r = in_process(env, "heatmap", "s3://photos/in/sub", "s3://photos/in/sub", "-o", "s3://photos/cli",
                   "--model", tiny_model)
    assert r.exit_code == 0, r.output
    assert "3 done, 0 skipped" in r.stdout  # the same prefix twice: each key once
    assert keys(client, "cli/") == ["cli/astronaut.jpg.heatmap.png", "cli/chelsea.jpg.heatmap.png",
                                    "cli/coffee.jpg.heatmap.png", "cli/job.json", "cli/manifest.jsonl"]
    journal = r.stdout.split("(journal: ")[1].split(")")[0]
    assert journal.startswith(env["MIDAS_ONNX_STATE_DIR"]) and journal.endswith("journal.sqlite")


def test_rows_not_yet_uploaded_are_kept_in_the_state_file(s3, tiny_model):
    """A driver killed (or an upload that failed) before the manifest reached the store:
    the local state file has rows the store lacks, and the next run trusts it."""
    import sqlite3

    client, env = s3
    assert in_process(env, "heatmap", "s3://photos/in/sub", "-o", "s3://photos/kept", "--model", tiny_model).exit_code == 0
    client.delete_object(Bucket="photos", Key="kept/manifest.jsonl")
    [state] = (p for p in __import__("pathlib").Path(env["MIDAS_ONNX_STATE_DIR"]).rglob("journal.sqlite")
               if sqlite3.connect(p).execute("SELECT count(*) FROM rows WHERE input LIKE 's3://photos/in/sub/%' "
                                             "AND data LIKE '%photos/kept/%'").fetchone()[0])
    db = sqlite3.connect(state)
    db.execute("UPDATE meta SET value = 0 WHERE key = 'exported'")  # as a kill before the upload leaves it
    db.commit()
    db.close()
    r = in_process(env, "heatmap", "s3://photos/in/sub", "-o", "s3://photos/kept", "--model", tiny_model)
    assert r.exit_code == 0 and "0 done, 3 skipped" in r.stdout
    assert "kept/manifest.jsonl" in keys(client, "kept/")  # uploaded again


def test_an_unwritable_state_folder_and_a_missing_pyarrow_are_one_line(s3, tiny_model, tmp_path, monkeypatch):
    client, env = s3
    home = "/proc/self/home"  # a HOME nobody can write in, root included
    env = {k: v for k, v in env.items() if k != "MIDAS_ONNX_STATE_DIR"}
    monkeypatch.delenv("MIDAS_ONNX_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    r = in_process(env, "heatmap", "s3://photos/in/sub", "-o", "s3://photos/nohome", "--model", tiny_model)
    assert r.exit_code == 1 and r.exception.__class__ is SystemExit, r.exception
    assert r.stderr.splitlines()[-1].startswith(f"error: {home}/.cache/midas-onnx/jobs/")
    assert r.stderr.splitlines()[-1].endswith(": cannot keep the job's state here (No such file or directory); "
                                              "set MIDAS_ONNX_STATE_DIR to a writable folder")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # as an install without it
    r = in_process(env, "heatmap", "s3://photos/in/sub", "-o", tmp_path / "out", "--model", tiny_model)
    assert r.exit_code == 1 and r.exception.__class__ is SystemExit
    assert r.stderr.splitlines()[-1] == "error: s3://photos/in/sub: URIs need pyarrow (pip install 'midas-onnx[ray]')"
