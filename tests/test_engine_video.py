"""Video files through the engine: writers are checked (a frame of another size is scaled,
never dropped; a writer that does not open is an error naming the output), and a valid
variable-frame-rate file is complete (its frames reach its end in time, though fewer than
duration x nominal rate)."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from runtime import DepthHeatmapper
from runtime.engine import Job, LocalRunner, OutputSpec, read_manifest
from runtime.engine.video import VideoWriters
from runtime.errors import ImageError

from .test_engine import tiny_model  # noqa: F401 - the one-op model (a session fixture)


def _vint(data: bytes, pos: int, marker: bool = False) -> tuple[int, int]:
    length = 1
    while length <= 8 and not data[pos] & (0x80 >> (length - 1)):
        length += 1
    value = data[pos] if marker else data[pos] & (0xFF >> length)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    return value, length


def _children(data: bytes, start: int, end: int):
    """EBML elements (id, body start, body size) between ``start`` and ``end``."""
    pos = start
    while pos < end:
        eid, n = _vint(data, pos, marker=True)
        size, m = _vint(data, pos + n)
        body = pos + n + m
        size = end - body if size == (1 << (7 * m)) - 1 else size  # unknown size: to the end
        yield eid, body, size
        pos = body + size


def variable_rate_mkv(path, stamps_ms: list[int], nominal_ms: int) -> None:
    """A Matroska file whose frames are at ``stamps_ms`` (one cluster, as OpenCV writes a
    short clip) with a nominal frame duration of ``nominal_ms``: what a phone writes when
    its frame rate drops in low light."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (64, 48))
    base = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for i in range(len(stamps_ms)):
        writer.write(np.roll(base, i, axis=1))
    writer.release()
    data = bytearray(path.read_bytes())
    frame = 0
    for eid, body, size in _children(data, 0, len(data)):
        for cid, cbody, csize in _children(data, body, body + size) if eid == 0x18538067 else ():  # Segment
            for sid, sbody, ssize in _children(data, cbody, cbody + csize):
                if cid == 0x1549A966 and sid == 0x4489:  # Info / Duration
                    data[sbody:sbody + ssize] = struct.pack(">f" if ssize == 4 else ">d", stamps_ms[-1] + nominal_ms)
                if cid == 0x1654AE6B and sid == 0xAE:  # Tracks / TrackEntry / DefaultDuration (ns)
                    for tid, tbody, tsize in _children(data, sbody, sbody + ssize):
                        if tid == 0x23E383:
                            data[tbody:tbody + tsize] = (nominal_ms * 1_000_000).to_bytes(tsize, "big")
                if cid == 0x1F43B675 and sid == 0xA3:  # Cluster / SimpleBlock: track, int16 time, flags
                    _, n = _vint(data, sbody)
                    data[sbody + n:sbody + n + 2] = struct.pack(">h", stamps_ms[frame])
                    frame += 1
    assert frame == len(stamps_ms)
    path.write_bytes(bytes(data))


def test_a_variable_frame_rate_video_is_complete(tmp_path, tiny_model):  # noqa: F811
    src = tmp_path / "in"
    src.mkdir()
    stamps = [0, 500, 1000, 1500, 2000] + [2040 + 40 * i for i in range(25)]  # 2 fps, then 25 fps
    variable_rate_mkv(src / "phone.mkv", stamps, nominal_ms=40)
    capture = cv2.VideoCapture(str(src / "phone.mkv"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 76  # the duration x 25 fps: more than the 30 there are
    capture.release()
    out = tmp_path / "out"
    hm = DepthHeatmapper(tiny_model)
    job = Job.prepare([str(src)], str(out), str(tiny_model), OutputSpec.make())
    summary = job.run(LocalRunner(hm, job.spec, job.store, job.digest))
    [row] = read_manifest(str(out))
    assert row["status"] == "done" and row["frames"] == 30, row["error"]
    assert summary.frames == 30


def test_a_frame_of_another_size_is_scaled_not_dropped(tmp_path, tiny_model):  # noqa: F811
    hm = DepthHeatmapper(tiny_model)
    target = tmp_path / "clip.heatmap.mp4"
    writers = VideoWriters({"heatmap": target}, OutputSpec.make(normalize="frame"), 10.0)
    rng = np.random.default_rng(0)
    for size in [(48, 64)] * 3 + [(24, 32)] * 3:  # a stream that changes resolution mid-way
        writers.add(hm.predict(rng.integers(0, 255, (*size, 3), dtype=np.uint8)))
    writers.close()
    capture = cv2.VideoCapture(str(target))
    shapes = []
    while (got := capture.read())[0]:
        shapes.append(got[1].shape)
    assert shapes == [(48, 64, 3)] * 6


def test_a_writer_that_does_not_open_is_an_error_naming_the_output(tmp_path, tiny_model):  # noqa: F811
    hm = DepthHeatmapper(tiny_model)
    blocked = tmp_path / ".clip.heatmap.partial.mp4"
    blocked.mkdir()  # a folder where the file should go: OpenCV's writer cannot open it
    writers = VideoWriters({"heatmap": blocked}, OutputSpec.make(), 10.0, {"heatmap": str(tmp_path / "clip.heatmap.mp4")})
    with pytest.raises(ImageError, match=rf"^{tmp_path / 'clip.heatmap.mp4'}: cannot be written: OpenCV's video "
                                         r"writer did not open \(mp4v in \.mp4"):
        writers.add(hm.predict(np.zeros((48, 64, 3), np.uint8)))
    writers.close()
