"""Calibration images through exactly the runtime's pre-processing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from tqdm import tqdm

from runtime.errors import ImageError, MidasOnnxError
from runtime.model.metadata import INPUT_NAME, ModelInfo
from runtime.outputs.render import IMAGE_EXTENSIONS
from runtime.model.preprocess import network_input

from .photos import PhotoSet, empty

MIN_RECOMMENDED = 32  # fewer calibration images than this: ranges may not cover real photos


class CalibrationError(MidasOnnxError):
    """No usable calibration or evaluation images."""


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_inputs(items: list[tuple[str, str, object]], info: ModelInfo, what: str) -> tuple[PhotoSet, list[str]]:
    """Network inputs (each at its own network shape) for every readable image, with its name
    and source photo, and the errors of the others. Items are ``(name, source, path or RGB
    array)`` (arrays: the built-in photos)."""
    kept, errors = empty(), []
    for name, source, item in items:
        try:
            kept.inputs.append(network_input(item, info, "rgb"))
        except ImageError as exc:
            errors.append(str(exc))
            continue
        kept.names.append(name)
        kept.sources.append(source)
    if not kept.inputs:
        raise CalibrationError(f"no readable {what} images among {len(items)} files" + (f" ({errors[0]} ...)" if errors else ""))
    return kept, errors


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds pre-processed images, each at its own network shape, to onnxruntime's calibrator.

    ``__len__`` and ``set_range`` let ``quantize_static`` collect one image at a time
    (its ``CalibStridedMinMax`` option, see ``STRIDE``): the histogram calibrators stack all
    collected outputs of a tensor into one array, which fails on a dynamic-size model whose
    photos come at several shapes, and holds every image's activations in memory at once.
    """

    STRIDE = 1

    def __init__(self, inputs: list[np.ndarray], progress: bool = False) -> None:
        self._inputs = inputs
        self._start, self._end = 0, len(inputs)
        self._it = iter(inputs)
        self._bar = tqdm(total=len(inputs), unit="img", desc="calibrating", disable=not progress, file=sys.stderr)

    def __len__(self) -> int:
        return len(self._inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, end_index
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        if x is None:
            return None
        self._bar.update(1)
        return {INPUT_NAME: x}

    def close(self) -> None:
        self._bar.close()

    def rewind(self) -> None:
        self._it = iter(self._inputs[self._start:self._end])
