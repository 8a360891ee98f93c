"""Torch-free monocular depth heatmaps: onnxruntime + numpy + OpenCV only, for every model
`midas-onnx export` writes (MiDaS small; Depth Anything V2 Small, relative and metric). Each
file carries its model's description, which sets the pre- and post-processing.

    from runtime import DepthHeatmapper
    hm = DepthHeatmapper("models/midas_small.onnx")
    result = hm.predict("photo.jpg")        # .depth (float32 HxW), .heatmap (uint8 BGR)
    hm.info.description.output              # what .depth is: relative inverse depth, or metres
"""

from .errors import ImageError, ImageTooLarge, MidasOnnxError, ModelError
from .heatmapper import DepthHeatmapper, DepthResult, read_model_info
from .model.metadata import ModelInfo
from .model.model_description import MODELS, ModelDescription
from .outputs.postprocess import COLORMAPS

__all__ = [
    "COLORMAPS",
    "MODELS",
    "DepthHeatmapper",
    "DepthResult",
    "ImageError",
    "ImageTooLarge",
    "MidasOnnxError",
    "ModelDescription",
    "ModelError",
    "ModelInfo",
    "read_model_info",
]
