"""One input through the whole pipeline: read, decode, predict, render every output, write.

``heatmap``'s threads and ``bulk``'s workers on every node run exactly this. An input's
failure is its row, with the real error (a Python exception from a library is named with its
type, and its traceback goes to the ``midas_onnx.job`` log), never the job's end.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from ..inputs import exif, images
from ..errors import ImageError, MidasOnnxError
from .plan import Item, make_row
from .spec import OutputSpec
from .store import Store, StoreError, is_uri, read_input

log = logging.getLogger("midas_onnx.job")
# Fault injection for tests: an input whose name contains this raises a plain RuntimeError
# inside the pipeline, as a library's own exception would.
RAISE_ENV = "MIDAS_ONNX_TEST_RAISE_ON"


def where() -> dict:
    """Node, host and pid for a row; the node is Ray's id when run inside Ray."""
    return {"node": os.environ.get("MIDAS_ONNX_NODE", ""), "host": socket.gethostname(), "pid": os.getpid()}


class Interrupted(Exception):
    """A video stopped at a frame boundary because the job is stopping: no row, redone by a rerun."""


def process(hm, item: Item, spec: OutputSpec, store: Store, digest: str, data: bytes | None = None,
            stop: threading.Event | None = None, tick: Callable[[], None] | None = None) -> dict | None:
    """The item's manifest row: ``done`` with its outputs written, or ``failed`` with why;
    None when ``stop`` ended a video partway (nothing of it is left under its names).
    ``data``: the input's bytes when they were sent along instead of read here; ``tick``:
    called after every video frame (progress a watchdog can see)."""
    started = time.perf_counter()
    frames = None
    try:
        if item.video:
            frames = process_video(hm, item, spec, store, stop, tick)
        else:
            process_image(hm, item, spec, store, data)
        status, error = "done", ""
    except Interrupted:
        return None
    except MidasOnnxError as exc:
        status, error = "failed", str(exc)
    except OSError as exc:
        status, error = "failed", f"{item.source}: {exc.strerror or exc}"
    except Exception as exc:  # noqa: BLE001 - a library's own exception: this input fails, the job goes on
        log.exception("%s: unexpected error", item.source)
        row = make_row(item, "failed", digest, error=f"{item.source}: {type(exc).__name__}: {str(exc).strip()[:300]}",
                       seconds=time.perf_counter() - started, where=where())
        row["traceback_logged"] = True
        return row
    return make_row(item, status, digest, error=error, seconds=time.perf_counter() - started,
                    frames=frames if status == "done" else None, where=where())


def process_image(hm, item: Item, spec: OutputSpec, store: Store, data: bytes | None = None) -> None:
    inject = os.environ.get(RAISE_ENV)
    if inject and inject in item.source:
        raise RuntimeError("fault injected for tests")
    if data is not None or is_uri(item.source):
        data = read_input(item.source) if data is None else data
        # named here: errors about the decoded pixels name the input, not "image"
        result = hm.predict(images.load(images.decode(data, item.source, hm.max_pixels), max_pixels=hm.max_pixels,
                                        name=item.source))
    else:
        result = hm.predict(item.source)  # the runtime reads the file (EXIF orientation, 16-bit kept)
    camera = None
    if spec.wants_camera:  # point clouds: the photo's focal length, from the head of its bytes
        camera = exif.camera(data if data is not None else exif.read_head(item.source))
    # all made before any is written
    payloads = spec.render(result, list(item.targets), model=hm.info.description.title, camera=camera)
    for kind, target in item.targets.items():
        store.write(target, payloads[kind])


def process_video(hm, item: Item, spec: OutputSpec, store: Store, stop: threading.Event | None = None,
                  tick: Callable[[], None] | None = None) -> int:
    """Frame by frame; memory holds one frame. Returns the frame count.

    Writes ``<name>.heatmap.mp4``, with ``overlay`` ``<name>.overlay.mp4``, with ``depth`` a
    ``<name>.depth/`` folder of one file per frame (png16 adds ``frames.csv`` with each
    frame's range: ``depth = lo + png / 65535 * (hi - lo)``). Colours follow
    ``spec.normalize``. Everything is written under temporary names and published only when
    the whole video decoded, so a video that fails partway leaves nothing under its names.
    """
    if is_uri(item.source) or not store.local or store.uri:
        raise StoreError(f"{item.source}: videos are read and written on local paths only; "
                         "give a local video and a local OUTPUT")
    targets = {kind: Path(t) for kind, t in item.targets.items()}
    temps = {kind: t.with_name(f".{t.name}.partial{t.suffix}") for kind, t in targets.items()}
    remove(*temps.values())  # left by an interrupted earlier run
    try:
        frames = _write_frames(hm, item.source, spec, temps, stop, tick, {k: str(t) for k, t in targets.items()})
    except BaseException:
        remove(*temps.values())
        raise
    for kind, temp in temps.items():
        if targets[kind].is_dir():
            shutil.rmtree(targets[kind])
        temp.replace(targets[kind])
    return frames


def _write_frames(hm, source: str, spec: OutputSpec, temps: dict[str, Path], stop: threading.Event | None,
                  tick: Callable[[], None] | None, names: dict[str, str]) -> int:
    from .video import VideoFrames, VideoWriters

    with VideoFrames(source) as video:
        writers = VideoWriters(temps, spec, video.fps, names)
        try:
            for frame in video:
                if stop is not None and stop.is_set():
                    raise Interrupted
                try:
                    result = hm.predict(frame)
                except MidasOnnxError as exc:
                    raise ImageError(f"{source}: frame {writers.frames}: {exc}") from None
                writers.add(result)
                if tick is not None:
                    tick()
        finally:
            writers.close()
        video.check_complete(writers.frames)
    if "depth" in temps and spec.depth == "png16":
        (temps["depth"] / "frames.csv").write_text("\n".join(writers.ranges) + "\n")
    return writers.frames


def remove(*paths: Path) -> None:
    """Delete files or folders (a video's depth frames) that may not exist."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


