"""The one pre-processing function: runtime, calibration, benchmarks, server and bulk use it.

It reproduces the upstream pipeline the model's description names (``InputRule``): RGB / 255
-> bicubic resize (OpenCV's ``INTER_CUBIC``) -> mean/std -> NCHW float32, all in float64
until the final cast, as upstream's numpy code does. Dynamic models keep the aspect ratio
with the long side (MiDaS: ``upper_bound``) or the short side (Depth Anything V2:
``lower_bound``) at the rule's size and each side a multiple of its ``multiple_of``;
fixed-size models are resized to their size, as upstream's own ONNX/OpenVINO scripts do.

Upstream converts the whole photo to float64 (24 bytes a pixel: about 1 GB for a 40 MP
photo) and resizes it with OpenCV. That is done here too while the copy is small (the
fastest way, OpenCV's resize is multi-threaded); past ``_FLOAT_COPY_BYTES``, bicubic being
separable, the vertical pass is done the way OpenCV does it (same sample positions, same
float32 coefficients, edge rows replicated) on just the 4 source rows each output row
reads, straight from the decoded uint8/uint16 pixels, and OpenCV's float64 resize does the
horizontal pass on the small result: memory then depends on the network height and the
photo's width, not its pixel count. The network input equals upstream's to the last bit on
the golden photos (the row path: at most one float32 ulp on a few values, the passes run
in the other order). OpenCV's float32 path would be off by up to 2e-5 on some scales
(640x427 -> 256x160), 1.4e-4 of the depth range at the output.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..inputs import images
from .metadata import ModelInfo
from .model_description import InputRule

_CUBIC_A = np.float32(-0.75)  # OpenCV's INTER_CUBIC kernel parameter
# Vertical-pass rows per block: bounds the scratch to BLOCK x width x 3 values.
_BLOCK_ROWS = 32
# A full-size float64 copy of the photo (upstream's way, and the fastest: one conversion,
# then OpenCV's multi-threaded resize) is made when it is at most this large, or no larger
# than the row-by-row path's own strip; past it (a 12 MP photo is 288 MB) the row path runs.
_FLOAT_COPY_BYTES = 64 << 20


def _multiple_of(x: float, step: int, max_val: int | None = None, min_val: int = 0) -> int:
    """Upstream ``Resize.constrain_to_multiple_of``: round to a multiple of ``step``, down
    if that passes ``max_val``, up if it falls under ``min_val`` (never under one ``step``)."""
    y = int(round(x / step) * step)
    if max_val is not None and y > max_val:
        y = int(math.floor(x / step) * step)
    if y < max(min_val, step):
        y = int(math.ceil(x / step) * step)
    return y


def network_size(height: int, width: int, info: ModelInfo, target: int | None = None) -> tuple[int, int]:
    """The (H, W) the network sees for an input of ``height`` x ``width``: a fixed model's
    size, else the description's rule at ``target`` (default: the rule's own size)."""
    if info.input_hw is not None:
        return info.input_hw
    return rule_size(height, width, info.description.input, target)


def rule_size(height: int, width: int, rule: InputRule, target: int | None = None) -> tuple[int, int]:
    """``InputRule``'s aspect-keeping size (see its docstring), as upstream's ``Resize`` computes it."""
    size, step = target or rule.size, rule.multiple_of
    if rule.resize == "lower_bound":
        scale = max(size / height, size / width)  # the short side reaches size
        cap = int(rule.max_aspect * size // step * step)
        if max(height, width) * scale <= cap:
            return (_multiple_of(scale * height, step, min_val=size),
                    _multiple_of(scale * width, step, min_val=size))
        size = cap  # a panorama past max_aspect: hold the long side instead
    scale = min(size / height, size / width)  # upper bound: the long side fits
    return _multiple_of(scale * height, step, max_val=size), _multiple_of(scale * width, step, max_val=size)


def cubic_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (dst x 4) and weights (dst x 4, float32) of OpenCV's bicubic resize
    from ``src`` to ``dst`` samples: ``x = (i + 0.5) * src / dst - 0.5`` in float32, taps at
    ``floor(x) - 1 .. floor(x) + 2`` clamped to the edge, Keys kernel with a = -0.75."""
    scale = 1.0 / (dst / src)  # as OpenCV: the inverse of its inverse scale, in double
    pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(pos)
    x = (pos - start).astype(np.float32)
    a, one = _CUBIC_A, np.float32(1.0)
    c0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + one
    c2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
    c3 = one - c0 - c1 - c2
    index = np.clip(start.astype(np.int64)[:, None] + np.arange(-1, 3), 0, src - 1)
    return index, np.stack([c0, c1, c2, c3], axis=1).astype(np.float32)


def _scale_of(image: np.ndarray) -> float:
    """What 1.0 is in the image's pixel values: 255 for uint8, 65535 for uint16, 1 for float."""
    if image.dtype == np.uint8:
        return 255.0
    if image.dtype == np.uint16:
        return 65535.0
    return 1.0


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(image.astype(float64), (width, height), INTER_CUBIC)``, never making a
    full-size float copy of ``image`` (HxW or HxWxC, any real dtype).

    The vertical pass runs here, reading 4 source rows per output row straight from the
    pixels (in blocks of ``_BLOCK_ROWS`` output rows, so temporaries stay small); the
    horizontal pass is OpenCV's own on the resulting height x W float64 strip, whose
    vertical scale is then 1 (an exact copy). Same positions, coefficients and edge rule as
    one ``cv2.resize`` of the whole image: they agree to the last bit on the tested sizes.
    """
    rows, row_w = cubic_taps(image.shape[0], height)
    row_w = row_w.astype(np.float64)
    tail = (1,) * (image.ndim - 2)
    strip = np.empty((height, *image.shape[1:]), np.float64)
    for top in range(0, height, _BLOCK_ROWS):
        out = strip[top:top + _BLOCK_ROWS]
        block = slice(top, top + len(out))
        np.multiply(np.take(image, rows[block, 0], axis=0), row_w[block, 0].reshape(-1, 1, *tail), out=out)
        for k in range(1, 4):
            out += np.take(image, rows[block, k], axis=0) * row_w[block, k].reshape(-1, 1, *tail)
    return cv2.resize(strip, (width, height), interpolation=cv2.INTER_CUBIC)


def resize_unit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upstream's ``cv2.resize(image / 255.0, (width, height), INTER_CUBIC)`` (/ 65535 for
    16-bit, as is for float), float64 in [0, 1]: that very call when the float copy is small
    (``_FLOAT_COPY_BYTES``), else ``resize_bicubic`` on the pixels and the division after
    (the same to a float32 ulp, without the full-size copy)."""
    top = _scale_of(image)
    channels = image.shape[2] if image.ndim == 3 else 1
    copy_bytes = image.shape[0] * image.shape[1] * channels * 8
    if copy_bytes <= max(_FLOAT_COPY_BYTES, height * image.shape[1] * channels * 8):
        unit = image / top if top != 1.0 else image.astype(np.float64)
        return cv2.resize(unit, (width, height), interpolation=cv2.INTER_CUBIC)
    small = resize_bicubic(image, height, width)
    if top != 1.0:
        small /= top
    return small


def preprocess(image: np.ndarray, info: ModelInfo, order: str = "bgr") -> np.ndarray:
    """A decoded image -> float32 1x3xhxw network input (``images.load`` gives valid ones).

    ``image``: HxW (gray), HxWx3 or HxWx4 (alpha ignored) in ``order`` ("bgr" or "rgb");
    uint8, uint16, or float in [0, 1]. Normalised as upstream does: ``(x - mean) / std`` on
    [0, 1] values in float64, cast to float32 once; one channel plane at a time (contiguous
    and scalar: numpy is slow on an innermost axis of 3).
    """
    h, w = network_size(image.shape[0], image.shape[1], info)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # a view: alpha is never read
    unit = resize_unit(image, h, w)
    rule = info.description.input
    out = np.empty((1, 3, h, w), np.float32)
    plane = np.empty((h, w), np.float64)
    for c in range(3):  # RGB planes out
        source = unit if unit.ndim == 2 else unit[:, :, 2 - c if order == "bgr" else c]
        np.subtract(source, rule.mean[c], out=plane)
        plane /= rule.std[c]
        out[0, c] = plane
    return out


def network_input(image: images.ImageInput, info: ModelInfo, order: str = "bgr",
                  max_pixels: int = images.MAX_PIXELS) -> np.ndarray:
    """Any accepted input (path, bytes, array, ``images.Loaded``) -> 1x3xhxw network input."""
    src = images.load(image, order, max_pixels)
    return preprocess(src.pixels, info, src.order)
