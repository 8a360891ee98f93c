"""Calibration images through exactly the runtime's pre-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from runtime.errors import ImageError, MidasOnnxError
from runtime.images import to_rgb01
from runtime.metadata import INPUT_NAME, ModelInfo
from runtime.outputs import IMAGE_EXTENSIONS
from runtime.preprocess import preprocess

MIN_RECOMMENDED = 32  # fewer calibration images than this: ranges may not cover real photos


class CalibrationError(MidasOnnxError):
    """No usable calibration or evaluation images."""


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_inputs(paths: list[Path], info: ModelInfo, what: str) -> tuple[list[np.ndarray], list[str]]:
    """Network inputs for every readable image, and the errors of the others."""
    inputs, errors = [], []
    for path in paths:
        try:
            inputs.append(preprocess(to_rgb01(path), info))
        except ImageError as exc:
            errors.append(str(exc))
    if not inputs:
        raise CalibrationError(f"no readable {what} images among {len(paths)} files" + (f" ({errors[0]} ...)" if errors else ""))
    return inputs, errors


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds pre-processed images one at a time to onnxruntime's calibrator."""

    def __init__(self, inputs: list[np.ndarray]) -> None:
        self._inputs = inputs
        self._it = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}

    def rewind(self) -> None:
        self._it = iter(self._inputs)
