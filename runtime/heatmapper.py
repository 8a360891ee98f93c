"""``DepthHeatmapper``: depth and heatmaps on a CPU, torch-free, for any model midas-onnx
exports (MiDaS small, Depth Anything V2 Small relative and metric): the file's description
sets the pre- and post-processing."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import groupby
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from .inputs import images
from .outputs import postprocess
from .errors import ModelError
from .model.metadata import INPUT_NAME, PREFIX, ModelInfo, parse_size
from .model.model_description import MIDAS_SMALL, OutputRule
from .model.preprocess import network_input, network_size
from .model.engine_choice import TYPICAL_PHOTO, open_session


@dataclass(frozen=True)
class DepthResult:
    """One image's result.

    depth: float32 HxW at the input's size, what ``output`` says: relative inverse depth
        (larger is nearer, unknown scale and shift) or, for metric models, metres.
    heatmap: uint8 HxWx3 BGR, the depth through the colormap (near is bright for inferno),
        made on first use, so a caller that wants only the depth or another colormap never
        pays for it. Heatmap *files* need no such array: ``runtime.outputs.render.render`` writes
        the PNG from the depth's 8-bit levels and the colormap's palette, block by block.
    source: the input's pixels as given or decoded (not copied; for overlays).
    output: the model's output rule (kind, unit, range), from its description.
    """

    depth: np.ndarray
    source: images.Loaded = field(repr=False)
    colormap: int = field(default=postprocess.colormap_id(postprocess.DEFAULT_COLORMAP), repr=False)
    output: OutputRule = field(default=MIDAS_SMALL.output, repr=False)

    @cached_property
    def heatmap(self) -> np.ndarray:
        """The depth through the heatmapper's colormap (uint8 HxWx3 BGR), made on first use."""
        return postprocess.colorize(self.depth, self.colormap)

    def colorized(self, colormap: int | None = None) -> np.ndarray:
        """The heatmap in another OpenCV colormap (its id), made once per colormap."""
        if colormap is None or colormap == self.colormap:
            return self.heatmap
        made = self.__dict__.setdefault("_colorized", {})  # frozen: the instance dict holds the cache
        if colormap not in made:
            made[colormap] = postprocess.colorize(self.depth, colormap)
        return made[colormap]

    @cached_property
    def image(self) -> np.ndarray:
        """The input as uint8 BGR (the input itself when it already is), made on first use."""
        return images.to_bgr8(self.source)

    def overlay(self, alpha: float = postprocess.DEFAULT_ALPHA, colormap: int | None = None) -> np.ndarray:
        """The heatmap blended over the input image (uint8 BGR, the image's size).

        ``alpha`` is the heatmap's weight; ``colormap`` an OpenCV colormap id, None for the
        heatmapper's own.
        """
        return postprocess.overlay(self.image, self.colorized(colormap), alpha)

    def depth_png16(self) -> np.ndarray:
        """The depth scaled to fill uint16 (0 = farthest, 65535 = nearest), for a 16-bit PNG.

        Relative, like the depth itself: the scaling is this image's own min-max.
        """
        return postprocess.depth_png16(self.depth)


class DepthHeatmapper:
    """Monocular depth heatmaps from a midas-onnx model (fp32, dynamic INT8 or static INT8),
    pre- and post-processed as the model's upstream pipeline does (``info.description``).

    One onnxruntime session is created here and reused for every call; ``predict`` is safe to
    call from several threads at once (onnxruntime's ``run`` is, and nothing else is shared).

    Inputs (``predict``/``heatmap``/``predict_batch``): a file path, encoded bytes, or a numpy
    array: HxW or HxWx1 grayscale, HxWx3 (``order="bgr"`` by default, as OpenCV gives it;
    ``order="rgb"`` for PIL/scikit-image), or HxWx4 (alpha ignored); uint8, uint16, or float
    in [0, 1]. Files are decoded with EXIF orientation applied.

    Args:
        model_path: an ONNX file written by ``midas-onnx export`` or ``quantize``.
        threads: intra-op threads; None = one per physical core (onnxruntime's choice).
        colormap: any OpenCV colormap by name ("inferno", "turbo", "magma", ...).
        input_size: for a dynamic-size model, the size its resize rule aims at instead of the
            description's (e.g. 364 or 252 for Depth Anything V2 instead of 518): fewer
            pixels, less work (a ViT's cost grows with the square of its tokens), a coarser
            depth map; a multiple of the model's ``multiple_of``. "HxW" runs a dynamic model
            at one fixed size. For ONNX files without midas-onnx metadata it is required:
            "HxW" or "dynamic" (they are then taken for MiDaS small).
        mean: the per-channel (RGB) mean subtracted from inputs scaled to [0, 1], instead of
            the description's (for ONNX files without midas-onnx metadata, whose model is
            not described).
        std: likewise, the per-channel (RGB) divisor applied after ``mean``.
        max_pixels: refuse larger inputs (decompression-bomb guard).
        memory_arena: onnxruntime's CPU arena. Off by default: with dynamic models it grows
            with every new input shape, and with fixed ones it measured no faster.
        engine: the inference engine: "onnxruntime", "openvino" (the ``openvino`` extra) or
            "auto" (measured once per file and CPU, then cached: ``runtime.model.engine_choice``);
            ``engine_choice`` says which one runs and why.
    """

    def __init__(
        self,
        model_path: str | Path,
        threads: int | None = None,
        colormap: str = postprocess.DEFAULT_COLORMAP,
        *,
        input_size: str | int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        max_pixels: int = images.MAX_PIXELS,
        memory_arena: bool = False,
        engine: str = "onnxruntime",
    ) -> None:
        self.model_path = Path(model_path)
        self.colormap = colormap
        self._colormap_id = postprocess.colormap_id(colormap)
        self.max_pixels = max_pixels
        self.session, self.engine_choice = open_session(
            self.model_path, threads, engine, memory_arena,
            shape=lambda s: network_size(*TYPICAL_PHOTO, read_model_info(s, self.model_path, input_size, mean, std)))
        self.info = read_model_info(self.session, self.model_path, input_size, mean, std)
        self._check_io()

    def _check_io(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(inputs[0].shape) != 4:
            desc = [(i.name, i.shape) for i in inputs]
            raise ModelError(f"{self.model_path}: expected one NCHW input named {INPUT_NAME!r}, found {desc}")

    # -- single images -------------------------------------------------------------------
    def predict(self, image: images.ImageInput, order: str = "bgr") -> DepthResult:
        """Depth and heatmap for one image, both at the image's own size."""
        src = images.load(image, order, self.max_pixels)
        depth = self._run(network_input(src, self.info))[0]
        return self._finish(src, depth)

    def preprocess(self, image: images.ImageInput, order: str = "bgr") -> np.ndarray:
        """The 1x3xhxw network input for one image (the runtime's one pre-processing)."""
        return network_input(image, self.info, order, self.max_pixels)

    def heatmap(self, image: images.ImageInput, order: str = "bgr") -> np.ndarray:
        """Shorthand for ``predict(image).heatmap``."""
        return self.predict(image, order).heatmap

    # -- batches ---------------------------------------------------------------------------
    def predict_batch(self, batch: Sequence[images.ImageInput], order: str = "bgr",
                      per_call: int | None = None) -> list[DepthResult]:
        """Results in input order. Fixed-size models: one session call for the whole batch;
        dynamic models: one call per distinct network input shape. ``per_call`` caps the
        images in one session call: on CPUs, larger batches stop paying once activations
        outgrow the cache (bulk sends 4 at a time; see ``bulk.pipeline.SESSION_BATCH``)."""
        srcs = [images.load(item, order, self.max_pixels) for item in batch]
        depths: list[np.ndarray | None] = [None] * len(srcs)

        def key(i: int) -> tuple[int, int]:
            return network_size(srcs[i].pixels.shape[0], srcs[i].pixels.shape[1], self.info)

        for _, group in groupby(sorted(range(len(srcs)), key=key), key=key):
            same_shape = list(group)
            step = per_call or len(same_shape)
            for start in range(0, len(same_shape), step):
                idx = same_shape[start:start + step]
                out = self._run(np.concatenate([network_input(srcs[i], self.info) for i in idx]))
                for i, d in zip(idx, out, strict=True):
                    depths[i] = d
        return [self._finish(src, d) for src, d in zip(srcs, depths, strict=True)]  # type: ignore[arg-type]

    # -- internals ---------------------------------------------------------------------------
    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: x})[0]

    def _finish(self, src: images.Loaded, net_depth: np.ndarray) -> DepthResult:
        output = self.info.description.output
        depth = postprocess.resize_depth(net_depth, src.pixels.shape[0], src.pixels.shape[1], output.resize)
        return DepthResult(depth, src, self._colormap_id, output)

    def __repr__(self) -> str:
        return (f"DepthHeatmapper({str(self.model_path)!r}, model={self.info.description.id}, "
                f"input={self.info.input_size_text}, precision={self.info.precision}, "
                f"engine={self.engine_choice.engine}, colormap={self.colormap!r})")


def read_model_info(
    session: ort.InferenceSession,
    path: Path,
    input_size: str | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ModelInfo:
    """ModelInfo from the file's metadata (``input_size`` then changes a dynamic model's
    size, see ``DepthHeatmapper``), or from explicit arguments for foreign ONNX files."""
    props = dict(session.get_modelmeta().custom_metadata_map)
    ours = any(k.startswith(PREFIX) for k in props)
    if ours or input_size is None:
        info = ModelInfo.from_props(props, str(path))  # a foreign file without input_size: refused, saying why
    else:
        info = ModelInfo(input_hw=None, name=path.stem)  # a foreign file is taken for MiDaS small
    try:
        if mean is not None or std is not None:
            info = replace(info, mean=tuple(mean or info.mean), std=tuple(std or info.std))
        return info if input_size is None else _resized(info, input_size, path)
    except ModelError:
        raise
    except ValueError as exc:
        raise ModelError(f"input_size: {exc}") from None


def _resized(info: ModelInfo, input_size: str | int, path: Path) -> ModelInfo:
    """``info`` run at ``input_size``: N (the rule's target size) or "HxW" (one fixed size)."""
    text = str(input_size).strip().lower()
    if info.input_hw is not None:
        if text in ("dynamic", info.input_size_text) or (text.isdigit() and info.input_hw == (int(text),) * 2):
            return info
        raise ModelError(f"{path} is a fixed {info.input_size_text} model: it cannot run at input size {text}; "
                         "export a dynamic one (`midas-onnx export`, the default) to choose the size at run time")
    if text == "dynamic":
        return info
    if text.isdigit():
        return replace(info, description=info.description.with_input_size(int(text)))
    return replace(info, input_hw=parse_size(text, info.description.input.multiple_of))
