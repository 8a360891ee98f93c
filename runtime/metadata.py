"""The contract between exporter, quantizer and runtime: ONNX ``metadata_props`` keys.

The exporter writes these; the runtime configures itself from them (input size, mean/std),
so a model file carries everything needed to use it. This module is plain Python on
purpose: the exporter (torch side) and the runtime (torch-free) both import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from .errors import ModelError

PREFIX = "midas_onnx."
FORMAT_VERSION = "1"
MODEL_NAME = "midas_v21_small_256"
INPUT_NAME = "image"
OUTPUT_NAME = "depth"
# ImageNet statistics, as upstream's small_transform NormalizeImage uses them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Upstream's hub transform for MiDaS_small: long side 256, sides multiples of 32.
DYNAMIC_TARGET = 256
MULTIPLE_OF = 32


@dataclass(frozen=True)
class ModelInfo:
    """What a midas-onnx model file says about itself.

    ``input_hw`` is ``None`` for a dynamic-size model (pre-processing then follows upstream's
    aspect-preserving ``small_transform``); otherwise the fixed (height, width).
    """

    name: str = MODEL_NAME
    input_hw: tuple[int, int] | None = (256, 256)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "fp32"
    checkpoint_sha256: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def dynamic(self) -> bool:
        return self.input_hw is None

    @property
    def input_size_text(self) -> str:
        return "dynamic" if self.input_hw is None else f"{self.input_hw[0]}x{self.input_hw[1]}"

    def to_props(self) -> dict[str, str]:
        """Key/value strings for ONNX ``metadata_props``."""
        props = {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "input_size": self.input_size_text,
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "precision": self.precision,
            "checkpoint_sha256": self.checkpoint_sha256,
            **self.extra,
        }
        return {PREFIX + k: str(v) for k, v in props.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelInfo":
        """Parse ``metadata_props``; a file without our keys is refused by name."""
        ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "model" not in ours or "input_size" not in ours:
            raise ModelError(
                f"{source} is not a midas-onnx model: its ONNX metadata has no "
                f"'{PREFIX}model'/'{PREFIX}input_size' entries. Export one with "
                "`midas-onnx export`, or pass input_size/mean/std to DepthHeatmapper explicitly."
            )
        try:
            mean = tuple(float(v) for v in json.loads(ours.get("mean", json.dumps(IMAGENET_MEAN))))
            std = tuple(float(v) for v in json.loads(ours.get("std", json.dumps(IMAGENET_STD))))
            input_hw = parse_size(ours["input_size"])
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{source} has malformed midas-onnx metadata: {exc}") from None
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ModelError(f"{source} has malformed mean/std metadata: {mean} / {std}")
        known = {"model", "input_size", "mean", "std", "precision", "checkpoint_sha256"}
        return cls(
            name=ours["model"],
            input_hw=input_hw,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            precision=ours.get("precision", "fp32"),
            checkpoint_sha256=ours.get("checkpoint_sha256", ""),
            extra={k: v for k, v in ours.items() if k not in known},
        )


def parse_size(text: str) -> tuple[int, int] | None:
    """``"dynamic"`` -> None; ``"256"`` or ``"256x384"`` -> (H, W), multiples of 32."""
    text = text.strip().lower()
    if text == "dynamic":
        return None
    parts = text.split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"size must be HxW (e.g. 256x384) or 'dynamic', got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h <= 0 or w <= 0 or h % MULTIPLE_OF or w % MULTIPLE_OF:
        raise ValueError(f"height and width must be positive multiples of {MULTIPLE_OF}, got {h}x{w}")
    return h, w


def set_metadata(proto, props: Mapping[str, str]) -> None:
    """Write ``props`` into an ``onnx.ModelProto``'s ``metadata_props``, replacing same keys.

    Works on the protobuf object alone, so this module never imports ``onnx``.
    """
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in [*keep, *props.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
