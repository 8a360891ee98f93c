"""Live inputs (a camera, a stream URL, raw frames on stdin) through the same per-frame
pipeline as a video file: predict, steady colours, then raw frames to a pipe and/or a
heatmap video written as it comes.

Live means bounded latency: ``runtime.inputs.live`` reads on its own thread and keeps only the
newest frame, so when inference falls behind, stale frames are dropped (and counted),
never queued.

A live recording is Matroska (``.heatmap.mkv``), not MP4: an MP4 is unplayable until its
index is written at the end, so a recording killed mid-way (or a machine losing power) would
be lost whole; Matroska written as it comes plays up to its last few seconds. An earlier
recording under the same name is refused unless ``force``, and a stream's password or
query (tokens) never reach a file name or the summary.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

from ..errors import MidasOnnxError
from ..inputs.live import STREAM_SCHEMES, LiveSummary, RawSink, open_source, redact, run_live
from .spec import OutputSpec
from .video import VideoWriters

LIVE_CONTAINER = ".mkv"


def is_live(spec: str) -> bool:
    """``-`` (raw frames on stdin), ``camera:N`` or a stream URL."""
    return spec == "-" or spec.startswith("camera:") or spec.lower().startswith(STREAM_SCHEMES)


def live_name(spec: str) -> str:
    """A file name for a live input's video: ``camera:0`` -> ``camera_0``; a URL without its
    credentials and query: ``rtsp://u:p@cam:554/s?token=x`` -> ``rtsp_cam_554_s``."""
    name = "stdin" if spec == "-" else redact(spec).removesuffix("?...")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "live"


def live_targets(source: str, spec: OutputSpec, outdir: Path) -> dict[str, Path]:
    """kind -> the recording's path (heatmap, and overlay with ``spec.overlay``)."""
    kinds = {k: v for k, v in spec.video_suffixes().items() if k != "depth"}
    return {kind: outdir / (live_name(source) + suffix.removesuffix(".mp4") + LIVE_CONTAINER)
            for kind, suffix in kinds.items()}


def run_live_job(hm, source: str, spec: OutputSpec, *, size: str | None = None, stdout: BinaryIO | None = None,
                 outdir: Path | None = None, max_frames: int | None = None, duration: float | None = None,
                 stdin: BinaryIO | None = None, force: bool = False) -> LiveSummary:
    """Heatmap frames of a live source to ``stdout`` (raw bgr24) and/or ``outdir`` (a heatmap
    video, with ``spec.overlay`` an overlay video too), until the source ends, a limit is
    reached or Ctrl-C. The summary counts frames in, processed and dropped, and latency."""
    if stdout is None and outdir is None:
        raise MidasOnnxError("a live input needs somewhere to go: --stdout (raw frames) and/or -o OUTPUT")
    targets = live_targets(source, spec, outdir) if outdir is not None else {}
    for path in targets.values():
        if path.exists() and not force:
            raise MidasOnnxError(f"{path} exists (an earlier recording); --force overwrites it, or write to "
                                 "another OUTPUT")
    frames = open_source(source, size, stdin=stdin)
    sink = RawSink(stdout) if stdout is not None else None
    writers = None
    if targets:
        writers = VideoWriters(targets, spec, getattr(frames, "fps", 0) or 30.0)
    colour = VideoWriters({}, spec)  # the steady colours, when only a pipe is written

    def handle(frame) -> None:
        result = hm.predict(frame.image)
        heat = (writers or colour).add(result)
        if sink is not None:
            sink.write(heat)

    try:
        return run_live(frames, handle, max_frames=max_frames, duration=duration)
    finally:
        if writers is not None:
            writers.close()
