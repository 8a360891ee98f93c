"""Torch-free MiDaS_small depth heatmaps: onnxruntime + numpy + OpenCV only.

    from runtime import DepthHeatmapper
    hm = DepthHeatmapper("models/midas_small.onnx")
    result = hm.predict("photo.jpg")        # .depth (float32 HxW), .heatmap (uint8 BGR)
"""

from .errors import ImageError, ImageTooLarge, MidasOnnxError, ModelError
from .heatmapper import DepthHeatmapper, DepthResult, read_model_info
from .metadata import ModelInfo
from .postprocess import COLORMAPS

__all__ = [
    "COLORMAPS",
    "DepthHeatmapper",
    "DepthResult",
    "ImageError",
    "ImageTooLarge",
    "MidasOnnxError",
    "ModelError",
    "ModelInfo",
    "read_model_info",
]
