"""The exceptions users see. Each message names the file or value at fault and what to do.

Library errors (OpenCV, onnxruntime, torch) are caught at the boundary and re-raised as one
of these, so a caller never has to read a traceback from deep inside a dependency.
"""


class MidasOnnxError(Exception):
    """Base class: catch this to handle every error this toolkit raises on purpose."""


class ImageError(MidasOnnxError, ValueError):
    """An input image is empty, corrupt, truncated, too large, or of an unsupported layout."""


class ImageTooLarge(ImageError):
    """An image (or its header) is above the pixel limit: refused before or after decoding."""


class ModelError(MidasOnnxError, ValueError):
    """A model file is missing, not ONNX, or not a midas-onnx export."""
