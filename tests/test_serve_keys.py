"""API keys as the docs promise them (issue 32, promise 5): never in any log line at the
CLI's own log level, over HTTP and over the WebSocket, right keys and wrong ones alike."""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .test_serve import running_server

# 256-bit keys, as `python -c "import secrets; print(secrets.token_urlsafe(32))"` makes them
KEY = "kP3v9QxW2mZr7TnY5bLc8HdJ4gFs6AeU1oRiVwXyBqM"
WRONG = "zZ9yX8wV7uT6sR5qP4oN3mL2kJ1iH0gFeDcBaQwErTy"


def _closed(ws) -> int:
    with pytest.raises(ConnectionClosed) as caught:
        while True:
            ws.recv(timeout=30)
    return caught.value.rcvd.code


def test_keys_are_in_no_log_line_at_the_cli_level(fixed_model, tmp_path):
    """uvicorn logs each WebSocket handshake at INFO with its query string: ``?key=`` was
    printed whole, for valid and wrong keys. Every way a key can be sent, right and wrong,
    over HTTP and WebSocket (accepted, closed 4401, refused in the handshake): no key in
    the output; the lines themselves are there, with the key left out."""
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    with running_server(fixed_model, "--api-key-file", str(keys), "--refusal-rate", "0") as base:
        ws = base.replace("http://", "ws://") + "/v1/stream"
        for key in (KEY, WRONG):
            httpx.get(base + "/v1/jobs/none", headers={"authorization": f"Bearer {key}"})
            httpx.get(base + f"/v1/jobs/none?key={key}")
            token = "midas-key." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
            for url, protocols in ((ws + f"?key={key}", None), (ws + f"?colormap=turbo&key={key}&x=1", None),
                                   (ws, ["midas-onnx", token])):
                with connect(url, subprotocols=protocols) as conn:
                    if key == WRONG:
                        assert _closed(conn) == 4401
            with pytest.raises(InvalidStatus):  # refused in the handshake: uvicorn's "403" line
                connect(ws + f"?key={key}", origin="http://evil.example")
        time.sleep(0.5)
    out = base.output()
    assert KEY not in out and WRONG not in out, out
    assert out.count('"WebSocket /v1/stream?') >= 6, out  # the handshake lines are still logged
    assert "GET /v1/jobs/none 404" in out and "GET /v1/jobs/none 401" in out, out
