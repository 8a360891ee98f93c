"""The contract between exporter, quantizer and runtime: ONNX ``metadata_props`` keys.

The exporter writes these; the runtime configures itself from them, so a model file carries
everything needed to use it. The model's whole description (``runtime.model.model_description``:
input and output rules, licence, checkpoint) is one JSON entry, ``midas_onnx.description``;
the older flat entries (``model``, ``input_size``, ``mean``, ``std``) are still written, from
the description, so files stay readable by earlier releases, and a file without a
description (exported before it existed) is MiDaS small. This module is plain Python on
purpose: the exporter (torch side) and the runtime (torch-free) both import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Mapping

from ..errors import ModelError
from .model_description import MIDAS_SMALL, DescriptionError, ModelDescription

PREFIX = "midas_onnx."
FORMAT_VERSION = "1"
MODEL_NAME = MIDAS_SMALL.name  # what files exported before descriptions existed hold
INPUT_NAME = "image"
OUTPUT_NAME = "depth"
_KNOWN = {"model", "input_size", "mean", "std", "precision", "checkpoint_sha256", "description"}
_SQUARE = (-1, -1)  # "the description's default size, square": ModelInfo's default input_hw


@dataclass(frozen=True)
class ModelInfo:
    """What a midas-onnx model file says about itself.

    ``description`` is the model's (MiDaS small when the file has none). ``input_hw`` is
    ``None`` for a dynamic-size model (pre-processing then follows the description's
    aspect-keeping rule); otherwise the fixed (height, width); by default the description's
    size, square. ``mean``/``std`` given here override the description's (for ONNX files
    without metadata) and are folded into it, so ``description.input`` is the one rule the
    runtime follows; left out, they read back as the description's.
    """

    name: str = ""
    input_hw: tuple[int, int] | None = _SQUARE
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    precision: str = "fp32"
    checkpoint_sha256: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    description: ModelDescription = MIDAS_SMALL

    def __post_init__(self) -> None:
        desc = self.description
        if self.mean is not None or self.std is not None:
            rule = replace(desc.input, mean=tuple(float(v) for v in (self.mean or desc.input.mean)),
                           std=tuple(float(v) for v in (self.std or desc.input.std)))
            desc = replace(desc, input=rule)
            try:
                desc.check()
            except DescriptionError as exc:
                raise ModelError(str(exc)) from None
        set_ = object.__setattr__  # frozen: fill the derived fields once, here
        set_(self, "description", desc)
        set_(self, "mean", desc.input.mean)
        set_(self, "std", desc.input.std)
        set_(self, "name", self.name or desc.name)
        if self.input_hw == _SQUARE:
            set_(self, "input_hw", (desc.input.size, desc.input.size))

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
            "description": self.description.to_json(),
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
            if "description" in ours:
                description, mean, std = ModelDescription.from_json(ours["description"]), None, None
            else:  # exported before descriptions: MiDaS small, with the mean/std it recorded
                description = MIDAS_SMALL
                mean = tuple(float(v) for v in json.loads(ours.get("mean", json.dumps(MIDAS_SMALL.input.mean))))
                std = tuple(float(v) for v in json.loads(ours.get("std", json.dumps(MIDAS_SMALL.input.std))))
            input_hw = parse_size(ours["input_size"], description.input.multiple_of)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{source} has malformed midas-onnx metadata: {exc}") from None
        if mean is not None and (len(mean) != 3 or len(std) != 3 or min(std) <= 0):
            raise ModelError(f"{source} has malformed mean/std metadata: {mean} / {std}")
        return cls(
            name=ours["model"],
            input_hw=input_hw,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            precision=ours.get("precision", "fp32"),
            checkpoint_sha256=ours.get("checkpoint_sha256", ""),
            extra={k: v for k, v in ours.items() if k not in _KNOWN},
            description=description,
        )


def parse_size(text: str, multiple_of: int = MIDAS_SMALL.input.multiple_of) -> tuple[int, int] | None:
    """``"dynamic"`` -> None; ``"256"`` or ``"256x384"`` -> (H, W), multiples of ``multiple_of``
    (the model's: MiDaS small's for files that do not say)."""
    text = text.strip().lower()
    if text == "dynamic":
        return None
    parts = text.split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"size must be HxW (e.g. 256x384) or 'dynamic', got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h <= 0 or w <= 0 or h % multiple_of or w % multiple_of:
        raise ValueError(f"height and width must be positive multiples of {multiple_of}, got {h}x{w}")
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
