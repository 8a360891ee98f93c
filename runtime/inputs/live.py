"""Live frames in, heatmaps out, with bounded latency: cameras, stream URLs, files and raw
bgr24 frames on a pipe, read by a thread where the newest frame wins.

Live means the input does not wait for us. When inference is slower than the source, a
queue would grow without bound and every output would come later than the one before; here
a reader thread keeps only the newest frame, so a stale one is replaced (and counted as
dropped), memory holds at most three frames (one being read, one waiting, one being
processed) and the latency from a frame's arrival to its output stays about one frame's
processing time. Files are not live: by default every frame of a file is processed (the
reader waits for the consumer) unless ``drop=True``.

    from runtime.inputs.live import open_source, run_live, RawSink
    source = open_source("camera:0")                       # or rtsp://..., http://..., clip.mp4,
    sink = RawSink(sys.stdout.buffer)                       # or "-" with size="640x480" (stdin)
    def handle(frame):                                      # frame.image: uint8 BGR HxWx3
        depth = hm.predict(frame.image).depth
        sink.write(steady.update(depth, frame.image).colorize(depth, cm))
    summary = run_live(source, handle, max_frames=None, duration=None)
    print(summary.text())    # frames in, processed, dropped, fps, latency p50/p95

Cameras and URLs open through OpenCV's ``VideoCapture`` (URLs with its FFmpeg backend, with
open and read timeouts so a dead stream ends instead of hanging).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from ..errors import MidasOnnxError

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
OPEN_TIMEOUT_S = 10.0  # a stream URL that does not answer within this ends with an error
READ_TIMEOUT_S = 10.0  # a stream that stops sending for this long counts as ended


class LiveError(MidasOnnxError):
    """A live source cannot be opened or read (bad spec, no such camera, stream unreachable)."""


@dataclass(frozen=True)
class Frame:
    """One input frame: its 0-based index among the frames read (dropped ones included), the
    uint8 BGR pixels and when it arrived (``time.perf_counter()``, right after reading)."""

    index: int
    image: np.ndarray
    arrived: float


# -- sources ----------------------------------------------------------------------------------
class FrameSource:
    """Something that yields frames one by one: ``read()`` blocks until the next frame and
    returns None at the end. ``live`` sources (cameras, streams, pipes) drop stale frames."""

    name: str = "source"
    live: bool = True

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or stream (called once, after the reader has stopped)."""

    @property
    def note(self) -> str:
        """Anything worth saying about how the source ended (empty when nothing)."""
        return ""


class CaptureSource(FrameSource):
    """Frames from an OpenCV ``VideoCapture`` (camera index, URL or file)."""

    def __init__(self, capture: cv2.VideoCapture, name: str, live: bool) -> None:
        self.capture, self.name, self.live = capture, name, live

    def read(self) -> np.ndarray | None:
        ok, image = self.capture.read()
        return image if ok else None

    def close(self) -> None:
        self.capture.release()

    @property
    def fps(self) -> float:
        """The rate the source declares (0 when it declares none)."""
        return float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)


class RawSource(FrameSource):
    """Raw bgr24 frames (``ffmpeg -f rawvideo -pix_fmt bgr24``) of a known size from a binary
    stream such as ``sys.stdin.buffer``. A trailing piece shorter than a frame is not a
    frame: it ends the stream and is reported in ``note``."""

    def __init__(self, stream: BinaryIO, width: int, height: int, name: str = "pipe", owned: bool = False) -> None:
        if width <= 0 or height <= 0:
            raise LiveError(f"frame size must be positive, got {width}x{height}")
        self.stream, self.width, self.height, self.name, self.owned = stream, width, height, name, owned
        self.frame_bytes = width * height * 3
        self.trailing = 0

    def read(self) -> np.ndarray | None:
        image = np.empty((self.height, self.width, 3), np.uint8)
        view, got = memoryview(image).cast("B"), 0
        while got < self.frame_bytes:
            n = self.stream.readinto(view[got:])
            if not n:
                self.trailing = got
                return None
            got += n
        return image

    def close(self) -> None:
        if self.owned:
            self.stream.close()

    @property
    def note(self) -> str:
        if not self.trailing:
            return ""
        return (f"{self.trailing} trailing bytes were not a whole {self.width}x{self.height} bgr24 frame "
                f"({self.frame_bytes} bytes): is --size right?")


def redact(spec: str) -> str:
    """A source as it may be shown and logged: a URL's user and password and its query (where
    tokens travel) left out: ``rtsp://user:pass@cam/s?token=x`` -> ``rtsp://cam/s?...``."""
    if "://" not in spec:
        return spec
    parts = urlsplit(spec)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (width x height, as ffmpeg's ``-s``) -> (640, 480)."""
    parts = text.lower().strip().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise LiveError(f"frame size must be WxH in pixels (e.g. 640x480), got {text!r}")
    return int(parts[0]), int(parts[1])


def open_source(spec: str, size: str | None = None, *, stdin: BinaryIO | None = None,
                open_timeout: float = OPEN_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S) -> FrameSource:
    """A source from what a user types: ``camera:N`` (device N), a stream URL (rtsp://,
    http(s)://, ...), ``-`` (raw bgr24 frames on ``stdin``, default ``sys.stdin.buffer``,
    with ``size`` "WxH") or a video file. Raises LiveError with the reason when it cannot open."""
    if spec == "-":
        if size is None:
            raise LiveError("raw frames on stdin need their size: --size WxH (e.g. 640x480)")
        import sys

        width, height = parse_frame_size(size)
        if stdin is not None:
            return RawSource(stdin, width, height, "stdin")
        # An unbuffered reader of its own on a copy of fd 0: a reader thread blocked in
        # sys.stdin.buffer holds that object's lock, and Python's shutdown (Ctrl-C with the pipe
        # still open) aborts on it ("could not acquire lock ... at interpreter shutdown").
        own = open(os.dup(sys.stdin.fileno()), "rb", buffering=0)  # noqa: SIM115 - closed by the source
        return RawSource(own, width, height, "stdin", owned=True)
    if spec.startswith("camera:"):
        index = spec[len("camera:"):]
        if not index.isdigit():
            raise LiveError(f"camera must be camera:N with N a device number, got {spec!r}")
        capture = cv2.VideoCapture(int(index))
        if not capture.isOpened():
            raise LiveError(f"{spec}: no camera with that number could be opened (none attached, or in use)")
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where the driver allows: no backlog of old frames
        return CaptureSource(capture, spec, live=True)
    if spec.lower().startswith(STREAM_SCHEMES):
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000)]
        capture = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            raise LiveError(f"{redact(spec)}: the stream could not be opened (unreachable, or not a video stream)")
        return CaptureSource(capture, redact(spec), live=True)
    if not Path(spec).is_file():
        raise LiveError(f"{spec}: no such file (live inputs are camera:N, a stream URL or - for stdin)")
    capture = cv2.VideoCapture(spec)
    if not capture.isOpened():
        raise LiveError(f"{spec}: cannot be opened as a video")
    return CaptureSource(capture, spec, live=False)


# -- the newest frame wins ---------------------------------------------------------------------
class _Slot:
    """One place for the next frame. ``drop``: a new frame replaces a waiting one (counted);
    otherwise the reader waits until the consumer has taken it (nothing lost, files)."""

    def __init__(self, drop: bool) -> None:
        self.drop = drop
        self.cond = threading.Condition()
        self.item: Frame | None = None
        self.ended = self.stopping = False
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Offer a frame; False once the consumer has stopped (the reader should end)."""
        with self.cond:
            while not self.drop and self.item is not None and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return False
            if self.item is not None:
                self.dropped += 1
            self.item = frame
            self.cond.notify_all()
            return True

    def get(self, timeout: float | None) -> Frame | None:
        """The waiting frame, or None when the stream ended or ``timeout`` passed (check
        ``ended``)."""
        with self.cond:
            if self.item is None and not self.ended:
                self.cond.wait(timeout)
            frame, self.item = self.item, None
            self.cond.notify_all()
            return frame

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class LiveReader:
    """Reads ``source`` on a daemon thread into a newest-wins slot; iterate ``frames()``.

    ``drop`` defaults to ``source.live``. ``frames_in`` counts frames read, ``dropped``
    those replaced before anyone took them; ``error`` holds what ended the reader if the
    source raised. Use as a context manager (or call ``stop``) so the source is released.
    """

    def __init__(self, source: FrameSource, drop: bool | None = None) -> None:
        self.source = source
        self.slot = _Slot(source.live if drop is None else drop)
        self.frames_in = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name=f"live-reader:{source.name}", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    def _read(self) -> None:
        try:
            while True:
                image = self.source.read()
                if image is None:
                    break
                if not self.slot.put(Frame(self.frames_in, image, time.perf_counter())):
                    break
                self.frames_in += 1
        except BaseException as exc:  # reported by the consumer, never lost in a thread
            self.error = exc
        finally:
            self.slot.end()

    def next(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet taken; None at the end of the stream or after ``timeout``
        seconds without one (then ``ended`` says which)."""
        return self.slot.get(timeout)

    @property
    def ended(self) -> bool:
        """The source has no more frames and the last one has been taken."""
        return self.slot.ended and self.slot.item is None

    def frames(self) -> Iterator[Frame]:
        """Frames until the end of the stream, each the newest at the time it is taken."""
        while (frame := self.next()) is not None or not self.ended:
            if frame is not None:
                yield frame

    def stop(self, wait: float = 2.0) -> None:
        """Stop reading and release the source. A reader blocked inside a device or pipe read
        gets ``wait`` seconds to return; the source is released only once it has (releasing
        a capture another thread is reading from can crash), otherwise the daemon thread is
        left to end with the process."""
        self.slot.stop()
        self._thread.join(wait)
        if not self._thread.is_alive():
            self.source.close()

    def __enter__(self) -> "LiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- latency and the summary -------------------------------------------------------------------
class LatencyStats:
    """Latency percentiles in constant memory: counts in log-spaced bins (1% wide, 10 us to
    ~100 s), so an hours-long stream costs the same ~1,600 integers as a short one and a
    percentile is exact to 1%."""

    _LOW, _RATIO, _BINS = 1e-5, 1.01, 1620

    def __init__(self) -> None:
        self.counts = np.zeros(self._BINS, np.int64)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        ratio = max(seconds, self._LOW) / self._LOW
        self.counts[min(self._BINS - 1, int(math.log(ratio) / math.log(self._RATIO)))] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float:
        """Seconds below which ``q`` percent of the samples fall (the bin's upper edge, capped
        at the largest sample); 0 with no samples."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100 * self.count))
        b = int(np.searchsorted(np.cumsum(self.counts), rank))
        return min(self._LOW * self._RATIO ** (b + 1), self.max)


@dataclass(frozen=True)
class LiveSummary:
    """What a live run did. ``frames_in`` = processed + dropped + (at most a frame or two
    read but not yet taken when a stop came). ``seconds``: from the first frame's arrival to
    the last output (a slow-starting source does not count against ``fps``). Latency: from a
    frame's arrival (read off the source) to its handler returning (its output written)."""

    source: str
    frames_in: int
    processed: int
    dropped: int
    seconds: float
    p50_ms: float
    p95_ms: float
    max_ms: float
    stopped: str  # "end of stream", "max frames", "duration", "interrupted", "output closed", "error: ..."
    note: str = ""

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.stopped.startswith("error")

    def text(self) -> str:
        """The one-line report ``heatmap`` prints for a live input: frames in, processed and
        dropped, fps, latency percentiles, and why it stopped."""
        note = f"; {self.note}" if self.note else ""
        return (f"{self.source}: {self.frames_in} frames in, {self.processed} processed, {self.dropped} dropped "
                f"(stale) in {self.seconds:.1f} s ({self.fps:.1f} fps); latency p50 {self.p50_ms:.0f} ms, "
                f"p95 {self.p95_ms:.0f} ms, max {self.max_ms:.0f} ms; stopped: {self.stopped}{note}")


def run_live(source: FrameSource, handle: Callable[[Frame], object], *, max_frames: int | None = None,
             duration: float | None = None, drop: bool | None = None) -> LiveSummary:
    """Call ``handle(frame)`` on the newest frame, again and again, until the stream ends,
    ``max_frames`` were processed, ``duration`` seconds passed, the output is closed
    (``BrokenPipeError`` from the handler) or Ctrl-C; then release the source and return
    the summary. Errors of the source end the run as ``stopped="error: ..."``; errors of
    the handler propagate (after the source is released)."""
    stats, processed, stopped = LatencyStats(), 0, "end of stream"
    started = time.perf_counter()
    first = last = started
    deadline = None if duration is None else started + duration
    reader = LiveReader(source, drop)
    try:
        while max_frames is None or processed < max_frames:
            wait = None if deadline is None else max(0.0, deadline - time.perf_counter())
            frame = reader.next(wait)
            if frame is None:
                if reader.ended:
                    break
                stopped = "duration"  # timed out waiting
                break
            handle(frame)
            last = time.perf_counter()
            stats.add(last - frame.arrived)
            first = frame.arrived if processed == 0 else first
            processed += 1
            if deadline is not None and time.perf_counter() >= deadline:
                stopped = "duration"
                break
        else:
            stopped = "max frames"
    except KeyboardInterrupt:
        stopped = "interrupted"
    except BrokenPipeError:
        stopped = "output closed"
    finally:
        reader.stop()
    if reader.error is not None and stopped == "end of stream":
        stopped = f"error: {reader.error}"
    return LiveSummary(source.name, reader.frames_in, processed, reader.dropped, last - first,
                       stats.percentile(50) * 1e3, stats.percentile(95) * 1e3, stats.max * 1e3, stopped, source.note)


# -- sinks -------------------------------------------------------------------------------------
class RawSink:
    """Raw bgr24 frames to a binary stream (``sys.stdout.buffer``) for the next program in a
    pipe (``ffmpeg -f rawvideo -pix_fmt bgr24 -s WxH -i -``). Every frame must have the
    first one's size, since the reader cannot tell where frames begin otherwise. Flushed per
    frame: a frame waiting in a buffer would add latency."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.shape: tuple[int, ...] | None = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        """Write one uint8 HxWx3 BGR frame and flush; ``ValueError`` for another dtype or
        shape, or a size other than the first frame's."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"raw bgr24 frames are uint8 HxWx3, got {image.dtype} {image.shape}")
        if self.shape is None:
            self.shape = image.shape
        elif image.shape != self.shape:
            raise ValueError(f"frame {self.frames} is {image.shape[1]}x{image.shape[0]}, the stream "
                             f"is {self.shape[1]}x{self.shape[0]}")
        self.stream.write(memoryview(np.ascontiguousarray(image)).cast("B"))
        self.stream.flush()
        self.frames += 1
