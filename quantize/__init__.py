"""INT8 variants of midas-onnx models.

Static QDQ (per-channel weights, U8 activations, calibrated on images through the runtime's
own pre-processing) is the one that is faster than fp32 on CPUs; dynamic INT8 (ConvInteger)
is slower than fp32 for this CNN and is offered only when asked for by name.
"""

from .config import PRESETS, QuantConfig
from .quantizer import QuantizeResult, describe, quantize_model

__all__ = ["PRESETS", "QuantConfig", "QuantizeResult", "describe", "quantize_model"]
