"""Live inputs (a camera, a stream URL, raw frames on stdin) through the same per-frame
pipeline as a video file: predict, steady colours, then raw frames to a pipe and/or a
heatmap video written as it comes.

Live means bounded latency: ``runtime.live`` reads on its own thread and keeps only the
newest frame, so when inference falls behind, stale frames are dropped (and counted),
never queued.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

from ..errors import MidasOnnxError
from ..live import STREAM_SCHEMES, LiveSummary, RawSink, open_source, run_live
from .spec import OutputSpec
from .video import VideoWriters


def is_live(spec: str) -> bool:
    """``-`` (raw frames on stdin), ``camera:N`` or a stream URL."""
    return spec == "-" or spec.startswith("camera:") or spec.lower().startswith(STREAM_SCHEMES)


def live_name(spec: str) -> str:
    """A file name for a live input's video: ``camera:0`` -> ``camera_0``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "stdin" if spec == "-" else spec).strip("_")[:80] or "live"


def run_live_job(hm, source: str, spec: OutputSpec, *, size: str | None = None, stdout: BinaryIO | None = None,
                 outdir: Path | None = None, max_frames: int | None = None, duration: float | None = None,
                 stdin: BinaryIO | None = None) -> LiveSummary:
    """Heatmap frames of a live source to ``stdout`` (raw bgr24) and/or ``outdir`` (a heatmap
    video, with ``spec.overlay`` an overlay video too), until the source ends, a limit is
    reached or Ctrl-C. The summary counts frames in, processed and dropped, and latency."""
    if stdout is None and outdir is None:
        raise MidasOnnxError("a live input needs somewhere to go: --stdout (raw frames) and/or -o OUTPUT")
    frames = open_source(source, size, stdin=stdin)
    sink = RawSink(stdout) if stdout is not None else None
    writers = None
    if outdir is not None:
        kinds = {k: v for k, v in spec.video_suffixes().items() if k != "depth"}
        temps = {kind: outdir / (live_name(source) + suffix) for kind, suffix in kinds.items()}
        writers = VideoWriters(temps, spec, getattr(frames, "fps", 0) or 30.0)
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
