"""Quantization settings as data: a validated frozen dataclass with presets, saved as JSON
beside the quantized model and in its metadata (as optimum's ``configuration.py``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

MODES = ("static", "dynamic")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Roles of layers that can be kept in float, resolved to node names in the graph by position.
# "all" keeps every conv in float: a diagnostic (what INT8 costs when nothing is quantized).
KEEP_FLOAT_ROLES = ("stem", "head", "all")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    mode: "static" (QDQ, activations calibrated on images: the fast one on CPUs) or
        "dynamic" (weights INT8, activations quantized at run time: ConvInteger, slower than
        fp32 for this CNN on CPU; offered because it needs no images).
    calibration: static only; "percentile" clips the 0.001% outliers that ReLU6-free
        decoder activations have. Chosen by measurement, see ``quantize/__init__.py``.
    per_channel: one weight scale per output channel (static); depthwise convs need it.
    keep_float: layer roles left in fp32: "stem" (first conv), "head" (the output convs),
        "all" (every conv: a diagnostic baseline).
    reduce_range: 7-bit weights (static U8S8). On x86 CPUs without VNNI, onnxruntime's U8S8
        kernels add pairs of uint8 x int8 products in int16 (``vpmaddubsw``), which saturates
        with 8-bit weights; with 7-bit weights no pair can (2 x 255 x 64 < 32768), so the file
        computes the same integers on every x86 CPU. Chosen by measurement on both kinds of
        CPU (docs/commands/quantize.md); off, a file is a little closer to fp32 on VNNI CPUs
        and much further from it on the others.
    """

    mode: str = "static"
    calibration: str = "percentile"
    percentile: float = 99.999
    per_channel: bool = True
    activation_type: str = "uint8"  # U8S8: the fast integer kernels on x86 (AVX2 and VNNI)
    weight_type: str = "int8"
    reduce_range: bool = True
    keep_float: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, got {self.calibration!r}")
        if not 90.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [90, 100], got {self.percentile}")
        if self.activation_type not in ("uint8", "int8") or self.weight_type not in ("uint8", "int8"):
            raise ValueError("activation_type and weight_type must be 'uint8' or 'int8'")
        bad = [r for r in self.keep_float if r not in KEEP_FLOAT_ROLES]
        if bad:
            raise ValueError(f"keep_float roles must be among {KEEP_FLOAT_ROLES}, got {bad}")

    def to_dict(self) -> dict:
        """The settings as JSON-ready data; a dynamic config omits the calibration settings,
        which it does not use."""
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        if self.mode == "dynamic":  # calibration settings mean nothing without calibration
            for key in ("calibration", "percentile", "activation_type"):
                d.pop(key)
        return d

    def to_json(self) -> str:
        """``to_dict`` as JSON with sorted keys, as saved beside the model and in its metadata."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        """The config that ``to_dict`` (or a saved JSON file's contents) describes, validated
        again; omitted settings take their defaults."""
        d = dict(d)
        d["keep_float"] = tuple(d.get("keep_float", ()))
        d.setdefault("reduce_range", False)  # files written before the setting had 8-bit weights
        return cls(**d)

    def with_(self, **changes) -> "QuantConfig":
        """A copy with ``changes`` applied and validated (the config itself is frozen)."""
        return replace(self, **changes)


PRESETS: dict[str, QuantConfig] = {
    "static": QuantConfig(mode="static"),
    "dynamic": QuantConfig(mode="dynamic", per_channel=False),
}
