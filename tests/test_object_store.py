"""``bulk`` and ``heatmap`` against an object store: a real S3 server (moto) on loopback.

What object stores change: outputs are single PUTs (no temp objects left, ever), paths keep
their scheme in the manifest, existence is one listing, and the manifest is uploaded even
when the job stops with an error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import cv2
import pytest

from .conftest import REPO

pytest.importorskip("moto.server", reason="moto[server] is in the test extra")


@pytest.fixture(scope="module")
def s3(photo_set):
    import boto3
    from moto.server import ThreadedMotoServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="photos")
    for name in ("astronaut", "coffee", "chelsea"):
        body = cv2.imencode(".jpg", cv2.resize(photo_set[name][:, :, ::-1], (120, 90)))[1].tobytes()
        client.put_object(Bucket="photos", Key=f"in/sub/{name}.jpg", Body=body)
    client.put_object(Bucket="photos", Key="in/broken.jpg", Body=b"\xff\xd8\xff not a photo")
    yield client, env
    server.stop()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="photos", Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midas_onnx", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)


def test_bulk_reads_and_writes_s3_and_resumes_from_one_listing(s3, fixed_model):
    client, env = s3
    r = cli(env, "bulk", "s3://photos/in", "s3://photos/out", "--model", str(fixed_model), "--save-depth", "npy")
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
    again = cli(env, "bulk", "s3://photos/in", "s3://photos/out", "--model", str(fixed_model), "--save-depth", "npy")
    assert "0 done, 3 skipped, 1 failed" in again.stdout


def test_a_job_that_stops_with_an_error_still_uploads_its_manifest(s3, fixed_model):
    client, env = s3
    env = {**env, "MIDAS_ONNX_TEST_CRASH_ON": "__init__"}  # no worker can start
    r = cli(env, "bulk", "s3://photos/in", "s3://photos/stopped", "--model", str(fixed_model))
    assert r.returncode == 2 and r.stderr.startswith("error: workers could not start")
    assert keys(client, "stopped/") == ["stopped/job.json", "stopped/manifest.jsonl"]


def test_heatmap_writes_to_s3_too(s3, fixed_model):
    client, env = s3
    r = cli(env, "heatmap", "s3://photos/in/sub", "-o", "s3://photos/cli", "--model", str(fixed_model))
    assert r.returncode == 0, r.stderr
    assert keys(client, "cli/") == ["cli/astronaut.jpg.heatmap.png", "cli/chelsea.jpg.heatmap.png",
                                    "cli/coffee.jpg.heatmap.png", "cli/job.json", "cli/manifest.jsonl"]
