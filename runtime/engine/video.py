"""Video files frame by frame: OpenCV's reader in, heatmap/overlay videos and depth frames out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..outputs.depth_files import encode_depth, png16_range
from ..errors import ImageError
from ..outputs.render import colour_range
from ..outputs.postprocess import colorize, colormap_id, overlay
from ..depth.steady import SteadyNormalizer
from .spec import OutputSpec, depth_frame_suffix

FOURCC = "mp4v"


class VideoFrames:
    """Iterates a video's frames; ``check_complete`` refuses a video that stopped early.

    Complete means the frames reached the container's end in time, not in number: OpenCV's
    frame count is the duration times a nominal rate when the container has no count of
    its own (Matroska, WebM), so a valid variable-frame-rate file has fewer frames than
    that. A file cut short stops well before its declared duration."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.capture = cv2.VideoCapture(str(source))
        if not self.capture.isOpened():
            self.capture.release()
            raise ImageError(f"{source}: cannot be opened as a video (not a video, or its header is damaged)")
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or 25.0
        count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared = int(count) if count > 0 else None
        self.last_ms = self.interval_ms = 0.0  # the last frame's timestamp, and the step to it

    def __enter__(self) -> "VideoFrames":
        return self

    def __exit__(self, *exc) -> None:
        self.capture.release()

    def __iter__(self):
        while True:
            ok, frame = self.capture.read()
            if not ok:
                return
            at = self.capture.get(cv2.CAP_PROP_POS_MSEC)
            self.last_ms, self.interval_ms = at, at - self.last_ms
            yield frame

    def check_complete(self, frames: int) -> None:
        if frames == 0:
            raise ImageError(f"{self.source}: no decodable video frames")
        if self.declared is None or frames >= self.declared - 1:
            return
        end_ms = self.declared / self.fps * 1000  # the container's duration
        slack_ms = 2 * max(1000 / self.fps, self.interval_ms)  # the last frame's own length, twice
        if self.last_ms > 0 and end_ms - self.last_ms <= slack_ms:
            return  # fewer frames than duration x nominal rate, but they reach the end: variable rate
        raise ImageError(f"{self.source}: decoding stopped at frame {frames} of {self.declared} "
                         "(damaged or cut short)")


class VideoWriters:
    """Heatmap (and overlay) videos plus depth frames under temporary names.

    Depth frames hold the network's own output for every frame (a relative model's with its
    own scale and shift per frame; a metric model's metres); only a relative model's colours
    are steadied, so depth files never carry a smoothing the user did not ask for. A metric
    model's colours span its fixed range of metres (``render.colour_range``) in every frame,
    so they need no steadying and hold still by themselves."""

    def __init__(self, temps: dict[str, Path], spec: OutputSpec, fps: float = 25.0,
                 names: dict[str, str] | None = None) -> None:
        self.temps, self.spec, self.fps = temps, spec, fps
        self.names = names or {kind: str(path) for kind, path in temps.items()}  # what errors call each video
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self.colormap = colormap_id(spec.colormap)
        self.steady = SteadyNormalizer() if spec.normalize == "video" else None
        self.ranges = ["frame,lo,hi"]
        self.frames = 0

    def add(self, result) -> np.ndarray:
        """Write one frame's outputs; returns its heatmap (uint8 BGR)."""
        span = colour_range(result.output)
        if span is not None:  # metres: one fixed range for every frame
            heat = colorize(result.depth, self.colormap, span)
        elif self.steady is not None:  # aligned to the running reference, then one smoothed range
            heat = self.steady.update(result.depth, result.image).colorize(result.depth, self.colormap)
        else:
            heat = result.colorized(self.colormap)
        for kind in ("heatmap", "overlay"):
            if kind in self.temps:
                self._write(kind, heat if kind == "heatmap" else overlay(result.image, heat))
        if "depth" in self.temps:
            folder = self.temps["depth"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{self.frames:06d}{depth_frame_suffix(self.spec.depth)}").write_bytes(
                encode_depth(result.depth, self.spec.depth, result.output))
            lo, hi = png16_range(result.depth, result.output)
            self.ranges.append(f"{self.frames},{lo!r},{hi!r}")
        self.frames += 1
        return heat

    def _write(self, kind: str, image) -> None:
        """A video has one size (a writer drops other sizes without a word): the first
        frame's, and a frame of another size is scaled to it."""
        if kind not in self.writers:
            self.temps[kind].parent.mkdir(parents=True, exist_ok=True)
            self.sizes[kind] = (image.shape[1], image.shape[0])
            writer = cv2.VideoWriter(str(self.temps[kind]), cv2.VideoWriter_fourcc(*FOURCC), self.fps, self.sizes[kind])
            if not writer.isOpened():
                writer.release()
                raise ImageError(f"{self.names[kind]}: cannot be written: OpenCV's video writer did not open "
                                 f"({FOURCC} in {self.temps[kind].suffix}: no such encoder in this OpenCV, or the "
                                 "file cannot be created)")
            self.writers[kind] = writer
        if (image.shape[1], image.shape[0]) != self.sizes[kind]:
            image = cv2.resize(image, self.sizes[kind], interpolation=cv2.INTER_AREA)
        self.writers[kind].write(image)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
        self.writers.clear()
