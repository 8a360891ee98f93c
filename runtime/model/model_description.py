"""One frozen description per model: what it is, where its weights come from, and the exact
input and output rules of its upstream pipeline (as qdrant/fastembed's ``model_description``).

Everything model-specific lives here and nowhere else: the exporter builds the network the
description names and writes the description into the ONNX file (``midas_onnx.description``);
the runtime reads it back and configures pre- and post-processing from it. A file exported
before descriptions existed is MiDaS small (``MIDAS_SMALL``), the only model there was.

Plain Python, no numpy or torch: the exporter, the runtime and the CLI's ``models`` listing
all import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

SCHEMA = 1
# The values each rule may take; a description naming anything else is refused on load.
FAMILIES = ("midas", "depth_anything_v2")
RESIZE_METHODS = ("upper_bound", "lower_bound")  # which side `size` bounds: the long or the short
INTERPOLATIONS = ("cubic",)  # OpenCV INTER_CUBIC (Keys, a=-0.75) on the float image
ARITHMETIC = ("float64",)  # upstream divides by 255, resizes and normalises in float64
OUTPUT_KINDS = ("relative_inverse_depth", "metric_depth")
OUTPUT_RESIZES = ("bicubic", "bilinear_align_corners")


class DescriptionError(ValueError):
    """A description (usually read from a file's metadata) is malformed or names an unknown rule."""


@dataclass(frozen=True)
class Checkpoint:
    """Where the official weights are published and what they look like.

    ``hub_repo``/``filename``/``revision`` locate the file on the Hugging Face hub (None for
    a plain download URL); ``revision`` and ``sha256`` pin it, and are None where this
    release has not recorded them yet (a download then says so, and the file's own sha256
    is written into every export).
    """

    url: str
    filename: str
    layout: str  # the upstream class whose state dict this is, key names unchanged
    keys: int  # number of state-dict entries in that layout
    parameters: int
    hub_repo: str | None = None
    revision: str | None = None
    sha256: str | None = None
    unused_keys: tuple[str, ...] = ()  # in upstream's file but not needed for inference


@dataclass(frozen=True)
class InputRule:
    """Upstream's pre-processing: photo -> network input.

    ``resize``: keep the aspect ratio with the long side (``upper_bound``) or the short side
    (``lower_bound``) at ``size``, each side rounded to a multiple of ``multiple_of`` (and
    not past ``size`` for upper_bound, not under it for lower_bound), resampled with
    ``interpolation`` on [0, 1] values in ``arithmetic``, then ``(x - mean) / std`` per RGB
    channel. ``max_aspect`` bounds what upstream leaves unbounded: with ``lower_bound`` a
    1:40 panorama would give a 518x20720 input (55,000 tokens); past ``max_aspect`` times
    ``size`` on the long side, the long side is held there instead (short side then under
    ``size``), so cost and memory stay bounded for any photo.
    """

    resize: str
    size: int
    multiple_of: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "cubic"
    channels: str = "rgb"
    arithmetic: str = "float64"
    max_aspect: float = 1.0


@dataclass(frozen=True)
class OutputRule:
    """What the network returns and how upstream brings it back to the photo's size.

    ``relative_inverse_depth``: larger is nearer, unknown scale and shift per image.
    ``metric_depth``: metres, larger is farther, in (0, ``max_depth``).
    """

    kind: str
    resize: str
    unit: str = ""
    max_depth: float | None = None

    @property
    def metric(self) -> bool:
        return self.kind == "metric_depth"


@dataclass(frozen=True)
class QuantRule:
    """What static INT8 (``quantize/``) quantizes in this network, chosen by measurement on a
    trained-like stand-in of it.

    ``op_types``: the ONNX op types given QuantizeLinear/DequantizeLinear (onnxruntime's
    ``op_types_to_quantize``); empty means onnxruntime's default, every op it can quantize
    (MiDaS small: its convs, adds, resizes). ``float_nodes``: regular expressions of node
    names (the exporter's, e.g. ``/attn/MatMul``) kept in float among those op types.
    """

    op_types: tuple[str, ...] = ()
    float_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDescription:
    """Everything about one model; ``network`` holds the family's architecture arguments."""

    id: str  # what `export --model` takes
    name: str  # the file's `midas_onnx.model` entry
    title: str
    family: str
    licence: str
    commercial_use: bool
    checkpoint: Checkpoint
    input: InputRule
    output: OutputRule
    network: Mapping[str, Any] = field(default_factory=dict, hash=False)
    notes: str = ""
    quantization: QuantRule = QuantRule()

    def with_input_size(self, size: int) -> "ModelDescription":
        """The same model run at another ``size`` (``--input-size``): fewer pixels, less work."""
        check_input_size(size, self.input.multiple_of)
        return replace(self, input=replace(self.input, size=size))

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelDescription":
        """Parse and check a description; unknown fields (from newer releases) are ignored."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            known = _known(cls, data, nested={"checkpoint": Checkpoint, "input": InputRule, "output": OutputRule,
                                              "quantization": QuantRule})
            if "quantization" not in known and known.get("id") in MODELS:
                # written before the rule existed: the rule this release has for the same model
                known["quantization"] = MODELS[known["id"]].quantization
            desc = cls(**known)
        except (ValueError, TypeError, KeyError) as exc:
            raise DescriptionError(f"malformed model description: {exc}") from None
        desc.check()
        return desc

    def check(self) -> None:
        """Refuse values this runtime cannot honour, naming the field."""
        rule, out = self.input, self.output
        for name, value, allowed in [("family", self.family, FAMILIES), ("input.resize", rule.resize, RESIZE_METHODS),
                                     ("input.interpolation", rule.interpolation, INTERPOLATIONS),
                                     ("input.arithmetic", rule.arithmetic, ARITHMETIC),
                                     ("input.channels", rule.channels, ("rgb",)),
                                     ("output.kind", out.kind, OUTPUT_KINDS), ("output.resize", out.resize, OUTPUT_RESIZES)]:
            if value not in allowed:
                raise DescriptionError(f"model description: {name} is {value!r}; this release knows {', '.join(allowed)}")
        if not (isinstance(rule.size, int) and isinstance(rule.multiple_of, int) and 0 < rule.multiple_of <= rule.size):
            raise DescriptionError(f"model description: input size {rule.size!r} / multiple_of {rule.multiple_of!r} "
                                   "must be positive integers, size at least multiple_of")
        if len(rule.mean) != 3 or len(rule.std) != 3 or min(rule.std) <= 0 or not rule.max_aspect >= 1:
            raise DescriptionError(f"model description: mean {rule.mean}, std {rule.std} (three values, std > 0) "
                                   f"and max_aspect {rule.max_aspect} (>= 1) are malformed")
        if out.metric and not (out.max_depth and out.max_depth > 0 and out.unit == "m"):
            raise DescriptionError("model description: a metric output needs unit 'm' and a positive max_depth")


def check_input_size(size: int, multiple_of: int) -> None:
    if not isinstance(size, int) or size < multiple_of or size % multiple_of:
        raise ValueError(f"input size must be a positive multiple of {multiple_of}, got {size}")


def _known(cls, data: Mapping[str, Any], nested: Mapping[str, type] | None = None) -> dict[str, Any]:
    """``data`` restricted to ``cls``'s fields, nested dataclasses built, lists made tuples."""
    out = {}
    for name in cls.__dataclass_fields__:
        if name not in data:
            continue
        value = data[name]
        if nested and name in nested:
            if not isinstance(value, dict):
                raise TypeError(f"{name} is not an object")
            value = nested[name](**_known(nested[name], value))
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DA_V2_SMALL_NETWORK = {"backbone": "vit_small_patch14_dinov2", "layers": [2, 5, 8, 11], "features": 64,
                        "out_channels": [48, 96, 192, 384], "pos_embed_grid": 37, "interpolate_offset": 0.1}
_DA_V2_INPUT = InputRule(resize="lower_bound", size=518, multiple_of=14, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         max_aspect=3.0)
_DA_V2_LAYOUT = "DepthAnything/Depth-Anything-V2 DepthAnythingV2(encoder='vits', features=64, out_channels=[48, 96, 192, 384])"
_DA_V2_LICENCE = "Apache-2.0 (upstream: Depth-Anything-V2-Small is Apache-2.0; Base/Large/Giant are CC-BY-NC-4.0)"

MIDAS_SMALL = ModelDescription(
    id="midas-small",
    name="midas_v21_small_256",
    title="MiDaS v2.1 small",
    family="midas",
    licence="MIT (isl-org/MiDaS code and weights)",
    commercial_use=True,
    checkpoint=Checkpoint(
        url="https://github.com/isl-org/MiDaS/releases/download/v2_1/midas_v21_small_256.pt",
        filename="midas_v21_small_256.pt", revision="v2_1",
        layout="isl-org/MiDaS MidasNet_small(features=64, backbone='efficientnet_lite3', exportable=True, "
               "non_negative=True, blocks={'expand': True})",
        keys=482, parameters=21_394_657),
    input=InputRule(resize="upper_bound", size=256, multiple_of=32, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    output=OutputRule(kind="relative_inverse_depth", resize="bicubic"),
    network={"backbone": "tf_efficientnet_lite3", "features": 64},
    notes="2020; a CNN, the fastest here",
)

DA_V2_SMALL = ModelDescription(
    id="da-v2-small",
    name="depth_anything_v2_vits",
    title="Depth Anything V2 Small",
    family="depth_anything_v2",
    licence=_DA_V2_LICENCE,
    commercial_use=True,
    checkpoint=Checkpoint(
        url="https://huggingface.co/depth-anything/Depth-Anything-V2-Small/resolve/main/depth_anything_v2_vits.pth",
        filename="depth_anything_v2_vits.pth", hub_repo="depth-anything/Depth-Anything-V2-Small",
        layout=_DA_V2_LAYOUT, keys=239, parameters=24_785_089, unused_keys=("pretrained.mask_token",)),
    input=_DA_V2_INPUT,
    output=OutputRule(kind="relative_inverse_depth", resize="bilinear_align_corners"),
    network=_DA_V2_SMALL_NETWORK,
    notes="2024; a ViT-S/14 (DINOv2) with a DPT head: sharper, slower (cost grows with the square of the tokens)",
    # The weight products in INT8; the two activation products of attention (scores, x values:
    # their QDQ pairs on heads x tokens^2 tensors cost more than INT8 saves at 518), LayerNorm,
    # Softmax, GELU, the adds and resizes in float (docs/how-to/quantize.md: the measurement).
    quantization=QuantRule(op_types=("MatMul", "Gemm", "Conv", "ConvTranspose"), float_nodes=("/attn/MatMul",)),
)


def _da_v2_metric(scene: str, dataset: str, repo: str, file_tag: str, max_depth: float) -> ModelDescription:
    """The metric fine-tunes: the same network with a Sigmoid head scaled to ``max_depth`` metres."""
    return replace(
        DA_V2_SMALL,
        id=f"da-v2-small-metric-{scene}",
        name=f"depth_anything_v2_metric_{file_tag}_vits",
        title=f"Depth Anything V2 Small, metric {scene} ({dataset}, up to {max_depth:g} m)",
        checkpoint=replace(
            DA_V2_SMALL.checkpoint,
            url=f"https://huggingface.co/{repo}/resolve/main/depth_anything_v2_metric_{file_tag}_vits.pth",
            filename=f"depth_anything_v2_metric_{file_tag}_vits.pth", hub_repo=repo,
            layout=f"{_DA_V2_LAYOUT}, metric_depth/ variant with max_depth={max_depth:g} (the same keys)"),
        output=OutputRule(kind="metric_depth", resize="bilinear_align_corners", unit="m", max_depth=max_depth),
        notes=f"metres; fine-tuned on {dataset} ({scene} scenes); check the dataset's licence for your use",
    )


DA_V2_SMALL_METRIC_INDOOR = _da_v2_metric("indoor", "Hypersim", "depth-anything/Depth-Anything-V2-Metric-Hypersim-Small",
                                          "hypersim", 20.0)
DA_V2_SMALL_METRIC_OUTDOOR = _da_v2_metric("outdoor", "Virtual KITTI 2",
                                           "depth-anything/Depth-Anything-V2-Metric-VKITTI-Small", "vkitti", 80.0)

MODELS: dict[str, ModelDescription] = {d.id: d for d in (MIDAS_SMALL, DA_V2_SMALL, DA_V2_SMALL_METRIC_INDOOR,
                                                           DA_V2_SMALL_METRIC_OUTDOOR)}
DEFAULT_MODEL_ID = MIDAS_SMALL.id
# Published by upstream but not offered: their weights are licensed for non-commercial use only.
NOT_OFFERED = {
    "Depth Anything V2 Base / Large / Giant (relative and metric)":
        "CC-BY-NC-4.0: non-commercial use only, so not offered here",
}


def quantization_rule(description: ModelDescription) -> QuantRule:
    """How this release quantizes the network ``description`` names: the rule this release
    has for the same id, else the file's own. The rule is a measurement of this release's
    quantizer and kernels, not a fact of the network, so the release's wins over the copy a
    file was exported with."""
    known = MODELS.get(description.id)
    return known.quantization if known is not None else description.quantization


def describe(model_id: str) -> ModelDescription:
    """The description for an ``export --model`` id, or a one-line error listing the ids."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise ValueError(f"unknown model {model_id!r}; choose from {', '.join(MODELS)}") from None
