"""``midas-onnx heatmap``: images, folders, globs and videos to depth heatmaps."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from .common import MODEL_HELP, default_model, friendly_errors

PROGRESS_MIN_ITEMS = 5  # fewer items than this: no progress bar, just the summary


@click.command("heatmap")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the results (created if needed).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help=MODEL_HELP)
@click.option("--colormap", default="inferno", show_default=True, help="Any OpenCV colormap name (turbo, magma, jet, ...).")
@click.option("--save-depth", type=click.Choice(["png16", "npy", "pfm", "exr"]), is_flag=False, flag_value="png16",
              default=None, help="Also write the depth: png16 (the default of a bare --save-depth: 16-bit, "
                                 "normalised), npy or pfm (float32, exact), exr (where OpenCV has the codec). "
                                 "<name>.depth.<ext>; videos: a <name>.depth/ folder of frames.")
@click.option("--known-depths", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CSV of x,y,depth_m (pixels, metres): depth files and point clouds hold metres, fitted "
                   "to these points; <name>.align.json records the fit. Applies to every image.")
@click.option("--save-ply", is_flag=True, help="Also write a coloured point cloud, <name>.ply (binary PLY).")
@click.option("--ply-step", type=click.IntRange(min=1), default=1, show_default=True,
              help="One point per N pixels in x and y.")
@click.option("--fov", type=click.FloatRange(0, 180, min_open=True, max_open=True), default=None,
              help="Horizontal field of view in degrees, for point clouds (default 60).")
@click.option("--intrinsics", default=None, help="Camera intrinsics fx,fy,cx,cy in pixels, for point clouds.")
@click.option("--normalize", type=click.Choice(["video", "frame"]), default="video", show_default=True,
              help="Videos: colour range carried across frames (steady colours) or each frame's own min/max.")
@click.option("--overlay", is_flag=True,
              help="Also write the heatmap blended over the photo (<name>.overlay.png; videos: <name>.overlay.mp4).")
@click.option("--force", is_flag=True, help="Overwrite existing output files (they are skipped otherwise).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Images in flight, each through the whole pipeline (default: one per CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads per image (default: 1 with several workers; all cores with one).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Refuse larger images (default 100,000,000).")
def command(inputs: tuple[str, ...], outdir: Path, model: Path | None, colormap: str, save_depth: str | None,
            known_depths: Path | None, save_ply: bool, ply_step: int, fov: float | None, intrinsics: str | None,
            normalize: str, overlay: bool, force: bool, workers: int | None, threads: int | None,
            max_pixels: int | None) -> None:
    """Write a depth heatmap for every image in INPUTS (files, folders, globs) and every video.

    \b
    Output names cannot collide: each input's path relative to the common folder of all
    inputs is mirrored under OUTPUT, keeping the full file name with its extension:
      photos/a.jpg -> OUTPUT/a.jpg.heatmap.png   (+ a.jpg.depth.png, a.jpg.overlay.png)
      photos/x/a.png -> OUTPUT/x/a.png.heatmap.png
      clip.mp4 -> OUTPUT/clip.mp4.heatmap.mp4    (frames streamed, never all in memory)
    A corrupt, empty or oversized file is reported by name and skipped; the exit status is
    then 1. Existing outputs are kept unless --force. Files inside OUTPUT are never inputs.
    """
    from runtime import DepthHeatmapper, images
    from runtime.outputs import common_root, expand_inputs, is_video

    with friendly_errors():
        outputs = _Outputs.make(save_depth, known_depths, save_ply, ply_step, fov, intrinsics, overlay)
        files, problems = expand_inputs(inputs, exclude=outdir)
        for message in problems:
            click.echo(f"error: {message}", err=True)
        if not files:
            raise click.ClickException("no input files")
        model = default_model(model)
        workers = workers or len(os.sched_getaffinity(0))
        if threads is None and workers > 1:
            threads = 1
        hm = DepthHeatmapper(model, threads=threads, colormap=colormap,
                             max_pixels=max_pixels or images.MAX_PIXELS)
    click.echo(f"model: {model} ({hm.info.precision}, input {hm.info.input_size_text}); "
               f"{workers} worker{'s' * (workers > 1)} x {threads or 'all'} thread{'s' * (threads != 1)}", err=True)
    job = _Job(hm, common_root(files), outdir, outputs, normalize, force, workers)
    started = time.perf_counter()
    stills = [f for f in files if not is_video(f)]
    job.run_images(stills)
    image_seconds = time.perf_counter() - started
    for video in (f for f in files if is_video(f)):
        job.run_video(video)
    elapsed = time.perf_counter() - started
    rate = job.images_done / image_seconds if image_seconds > 0 else 0.0
    videos = f" ({job.videos_done} videos, {job.frames} frames)" if job.videos_done else ""
    click.echo(f"{job.done} done{videos}, {job.skipped} skipped (exist; --force to overwrite), "
               f"{job.failed} failed in {elapsed:.1f} s ({rate:.1f} images/s) -> {outdir}")
    if job.failed or problems:
        sys.exit(1)


@dataclass(frozen=True)
class _Outputs:
    """What to write for each input, checked before any work starts."""

    depth: str | None = None
    points: tuple | None = None  # known depths: metric outputs
    ply: bool = False
    ply_step: int = 1
    fov: float | None = None
    intrinsics: object | None = None
    overlay: bool = False

    @classmethod
    def make(cls, depth, known_depths, ply, ply_step, fov, intrinsics, overlay) -> "_Outputs":
        from runtime.depth_files import check_format
        from runtime.metric import read_points
        from runtime.pointcloud import Intrinsics

        if depth is not None:
            check_format(depth)
        points = None
        if known_depths is not None:
            points = tuple(read_points(known_depths))
            if depth == "png16":
                raise click.UsageError("png16 depth is normalised per image and cannot hold metres; "
                                       "use --save-depth npy, pfm or exr with --known-depths")
            depth = depth or "npy"  # metres need a float format
        if fov is not None and intrinsics is not None:
            raise click.UsageError("--fov and --intrinsics are alternatives; give one")
        return cls(depth, points, ply, ply_step, fov, Intrinsics.parse(intrinsics) if intrinsics else None, overlay)

    def kinds(self) -> dict[str, str]:
        """kind -> file suffix after the input's full name."""
        from runtime.outputs import output_suffixes

        kinds = output_suffixes(self.depth, self.overlay)
        if self.points is not None:
            kinds["align"] = ".align.json"
        if self.ply:
            kinds["ply"] = ".ply"
        return kinds

    def render(self, result, kinds) -> dict[str, bytes]:
        """Every output file's bytes for one result; metric (fitted once) when known depths
        were given."""
        import json

        from runtime.depth_files import encode_depth
        from runtime.metric import align, metric_depth
        from runtime.outputs import render
        from runtime.pointcloud import DEFAULT_FOV_DEG, Intrinsics, ply_bytes

        fit = align(result.depth, self.points) if self.points is not None else None
        depth = metric_depth(result.depth, fit) if fit is not None else result.depth
        out = {}
        for kind in kinds:
            if kind in ("heatmap", "overlay"):
                out[kind] = render(result, kind)
            elif kind == "depth":
                out[kind] = encode_depth(depth, self.depth)
            elif kind == "align":
                out[kind] = (json.dumps(fit.to_dict(), indent=2) + "\n").encode()
            else:
                h, w = depth.shape
                cam = self.intrinsics or Intrinsics.from_fov(w, h, self.fov or DEFAULT_FOV_DEG)
                out[kind] = ply_bytes(depth, result.image, cam, self.ply_step, metric=fit is not None)
        return out


class _Job:
    """Whole images in parallel: each worker thread reads, decodes, pre-processes, infers,
    colours and encodes one image, and the session (one, shared) runs each call on the
    worker's own thread (1 intra-op thread by default).

    Measured on 2 cores (static INT8, 400 photos at 640x480): two such workers gave 29.9
    images/s against 20.7 with one worker running inference on both cores.
    Every stage is compute-bound, and a 2-thread inference left each core waiting on the other
    at every layer while the other stages fought it for the same two cores.
    """

    def __init__(self, hm, root: Path, outdir: Path, outputs: _Outputs, normalize: str = "video",
                 force: bool = False, workers: int = 1) -> None:
        self.hm, self.root, self.outdir = hm, root, outdir
        self.outputs = outputs
        self.normalize = normalize
        self.force = force
        self.workers = workers
        self.images_done = self.videos_done = self.frames = self.skipped = self.failed = 0

    @property
    def done(self) -> int:
        """Files done: each image and each video counts once."""
        return self.images_done + self.videos_done

    def _fail(self, message: str) -> None:
        from tqdm import tqdm

        self.failed += 1
        tqdm.write(f"error: {message}", file=sys.stderr)  # prints above a live progress bar

    def run_images(self, files: list[Path]) -> None:
        from tqdm import tqdm

        from runtime.errors import MidasOnnxError
        from runtime.outputs import output_path

        todo = []
        for src in files:
            targets = {k: output_path(src, self.root, self.outdir, suffix) for k, suffix in self.outputs.kinds().items()}
            if not self.force and all(t.exists() for t in targets.values()):
                self.skipped += 1
            else:
                todo.append((src, targets))
        bar = tqdm(total=len(todo), unit="img", disable=len(todo) < PROGRESS_MIN_ITEMS, file=sys.stderr)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="heatmap") as pool:
            window: deque[tuple[Path, Future]] = deque()  # in order; bounded, so memory is too
            items = iter(todo)
            while True:
                while len(window) < 2 * self.workers and (item := next(items, None)) is not None:
                    window.append((item[0], pool.submit(self._one, *item)))
                if not window:
                    break
                src, future = window.popleft()
                try:
                    future.result()
                    self.images_done += 1
                except MidasOnnxError as exc:
                    self._fail(str(exc))
                except OSError as exc:
                    self._fail(f"{src}: could not write output ({exc.strerror or exc})")
                bar.update(1)
        bar.close()

    def _one(self, src: Path, targets: dict[str, Path]) -> None:
        from runtime.files import write_atomic

        result = self.hm.predict(src)
        payloads = self.outputs.render(result, targets)  # all, before any is written
        for kind, target in targets.items():
            write_atomic(target, payloads[kind])

    def run_video(self, src: Path) -> None:
        """Frame by frame: read, predict, write; memory holds one frame at a time.

        Writes ``<name>.heatmap.mp4``, with ``--overlay`` also ``<name>.overlay.mp4``, and with
        ``--save-depth`` the depth as ``<name>.depth/``: one file per frame (``000000.png`` ...;
        png16 adds ``frames.csv`` with each frame's depth range, so ``depth = lo + png / 65535 *
        (hi - lo)``; npy and pfm hold the float depth itself). Colours follow ``--normalize``:
        ``video`` maps every frame through one range that carries across frames (no pumping),
        ``frame`` through each frame's own min and max. Everything is written under temporary
        names and published only when the whole video decoded: a video that fails partway
        leaves nothing under its final names (a rerun then redoes it) and counts as failed.
        """
        import shutil

        import cv2

        from runtime.depth_files import FORMATS, encode_depth
        from runtime.errors import MidasOnnxError
        from runtime.outputs import output_path
        from runtime.postprocess import SteadyRange, colorize, depth_range, overlay

        suffixes = {"heatmap": ".heatmap.mp4"}  # videos: one file per kind, named like the images' 
        if self.outputs.overlay:
            suffixes["overlay"] = ".overlay.mp4"
        if self.outputs.depth:
            suffixes["depth"] = ".depth"
        targets = {kind: output_path(src, self.root, self.outdir, suffix) for kind, suffix in suffixes.items()}
        if not self.force and all(t.exists() for t in targets.values()):
            self.skipped += 1
            return
        capture = cv2.VideoCapture(str(src))
        if not capture.isOpened():
            self._fail(f"{src}: cannot be opened as a video (not a video, or its header is damaged)")
            return
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.get(cv2.CAP_PROP_FRAME_COUNT) > 0 else None
        temps = {kind: t.with_name(f".{t.name}.partial{t.suffix}") for kind, t in targets.items()}
        _remove(*temps.values())  # left by an interrupted earlier run
        writers: dict[str, cv2.VideoWriter] = {}
        ranges: list[str] = ["frame,lo,hi"]
        steady = SteadyRange() if self.normalize == "video" else None
        frame_suffix = FORMATS[self.outputs.depth][0].removeprefix(".depth") if self.outputs.depth else ""
        frames, error = 0, None
        from tqdm import tqdm

        try:
            with tqdm(total=declared, unit="frame", desc=src.name, file=sys.stderr,
                      disable=(declared or 0) < PROGRESS_MIN_ITEMS) as bar:
                while True:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    result = self.hm.predict(frame)
                    heat = (colorize(result.depth, result.colormap, steady.update(result.depth))
                            if steady is not None else result.heatmap)
                    for kind in ("heatmap", "overlay"):
                        if kind not in temps:
                            continue
                        out = heat if kind == "heatmap" else overlay(result.image, heat)
                        if kind not in writers:
                            temps[kind].parent.mkdir(parents=True, exist_ok=True)
                            writers[kind] = cv2.VideoWriter(str(temps[kind]), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                            (out.shape[1], out.shape[0]))
                        writers[kind].write(out)
                    if "depth" in temps:
                        temps["depth"].mkdir(parents=True, exist_ok=True)
                        (temps["depth"] / f"{frames:06d}{frame_suffix}").write_bytes(
                            encode_depth(result.depth, self.outputs.depth))
                        lo, hi = depth_range(result.depth)
                        ranges.append(f"{frames},{lo!r},{hi!r}")
                    frames += 1
                    bar.update(1)
        except MidasOnnxError as exc:
            error = f"frame {frames}: {exc}"
        except OSError as exc:
            error = f"could not write output ({exc.strerror or exc})"
        finally:
            capture.release()
            for w in writers.values():
                w.release()
        if error is None and frames == 0:
            error = "no decodable video frames"
        if error is None and declared is not None and frames < declared - 1:
            error = f"decoding stopped at frame {frames} of {declared} (damaged or cut short)"
        if error is not None:
            _remove(*temps.values())
            self._fail(f"{src}: {error}")
            return
        if self.outputs.depth == "png16":
            (temps["depth"] / "frames.csv").write_text("\n".join(ranges) + "\n")
        for kind, t in temps.items():
            if targets[kind].is_dir():
                shutil.rmtree(targets[kind])
            t.replace(targets[kind])
        self.videos_done += 1
        self.frames += frames


def _remove(*paths: Path) -> None:
    """Delete files or folders (a video's depth frames) that may not exist."""
    import shutil

    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
