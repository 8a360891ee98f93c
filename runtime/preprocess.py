"""The one pre-processing function: runtime, calibration, benchmarks, server and bulk use it.

It reproduces upstream MiDaS's torch.hub ``small_transform`` in numpy/OpenCV: RGB in
[0, 1] -> bicubic resize -> ImageNet mean/std -> NCHW float32. Dynamic models keep the
aspect ratio with the long side at 256 and each side a multiple of 32 (upstream's
``resize_method="upper_bound"``); fixed-size models are resized to their size, as
upstream's own ONNX/OpenVINO scripts do.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .metadata import DYNAMIC_TARGET, MULTIPLE_OF, ModelInfo


def _multiple_of(x: float, max_val: int) -> int:
    """Upstream ``Resize.constrain_to_multiple_of``: round, but never above ``max_val``."""
    y = int(round(x / MULTIPLE_OF) * MULTIPLE_OF)
    if y > max_val:
        y = int(math.floor(x / MULTIPLE_OF) * MULTIPLE_OF)
    if y < MULTIPLE_OF:
        y = int(math.ceil(x / MULTIPLE_OF) * MULTIPLE_OF)
    return y


def network_size(height: int, width: int, info: ModelInfo, target: int = DYNAMIC_TARGET) -> tuple[int, int]:
    """The (H, W) the network sees for an input of ``height`` x ``width``."""
    if info.input_hw is not None:
        return info.input_hw
    scale = min(target / height, target / width)  # upper bound: the long side fits
    return _multiple_of(scale * height, target), _multiple_of(scale * width, target)


def preprocess(rgb01: np.ndarray, info: ModelInfo) -> np.ndarray:
    """HxWx3 RGB in [0, 1] -> float32 1x3xhxw network input.

    The resize runs in float64, as upstream's (``img / 255.0`` is float64): OpenCV's float32
    bicubic path differs by up to 5e-5 on some downscales (640x427 -> 256x160), which grew
    to 1.4e-4 of the depth range at the output; float64 matches upstream to the bit and
    costs ~11 ms on a 1080p photo.
    """
    h, w = network_size(rgb01.shape[0], rgb01.shape[1], info)
    resized = cv2.resize(rgb01.astype(np.float64), (w, h), interpolation=cv2.INTER_CUBIC)
    normalised = (resized - np.asarray(info.mean)) / np.asarray(info.std)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32)
