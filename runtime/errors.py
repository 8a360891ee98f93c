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


def one_line(what: str, error: type[MidasOnnxError], fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; whatever a third-party library raises becomes one ``error``
    line naming ``what`` failed (their own messages run to pages of C++, graph dumps or
    tracebacks from deep in onnx and numpy: the first line says it). Errors of this project
    pass through unchanged."""
    try:
        return fn(*args, **kwargs)
    except MidasOnnxError:
        raise
    except Exception as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = lines[0][:300] if lines else ""
        raise error(f"{what} failed: {type(exc).__name__}{': ' + detail if detail else ''}") from None
