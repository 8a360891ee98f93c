"""PyTorch -> ONNX for the networks of ``export.checkpoint`` (MiDaS small, Depth Anything
V2 Small), then clean-up, metadata (the model's description) and verification.

Choices:

- Exporter: the TorchScript exporter (``dynamo=False``). The networks are convolutions,
  matmuls, norms, adds and resizes with static shapes apart from batch, height and width,
  which the TorchScript exporter writes in seconds; its graph is the one the parity checks
  below and the INT8 quantizer are verified on. Sizes read from a tensor in ``forward`` are
  traced, so everything computed from them follows the input; Python floats and ints made
  from them would freeze (see ``export.depth_anything``).
- Opset 17: every op here (Conv, Clip, Pad, Resize with align_corners, LayerNormalization,
  Range) exists by opset 17, the newest that onnxruntime's quantizer, OpenVINO and TensorRT
  all handle without caveats; there is nothing in 18+ these networks need.
- Static pads: ``export.model.StaticSameConv2d`` gives each strided TF-"same" conv a
  constant ``F.pad`` instead of pads computed from the input size, so the graph carries no
  shape arithmetic, at any size, and quantizes like any other.
- onnxslim after export: folds each of those constant Pads into its Conv's own ``pads``
  attribute and removes the other constant-only nodes, leaving 194 nodes (97 Conv, no Pad,
  no Shape) in the dynamic-size graph as in a fixed one. Fewer nodes make session creation
  cheaper, which matters for CLI and serverless cold starts; outputs are unchanged (the
  parity check runs on the slimmed file). ``--no-slim`` skips it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.errors import MidasOnnxError, one_line
from runtime.files import temp_path_beside
from runtime.model.metadata import INPUT_NAME, OUTPUT_NAME, ModelInfo, set_metadata
from runtime.model.model_description import MIDAS_SMALL, ModelDescription

log = logging.getLogger(__name__)

OPSET = 17
MAX_REL_ERROR = 1e-4
# Shapes checked after a dynamic export, as fractions of the model's size (rounded to its
# multiple): square at its own size, then smaller landscape, portrait and a batch of 2 (a
# ViT's cost grows with the square of its tokens: the check stays cheap for either family).
DYNAMIC_CHECK_FRACTIONS = ((1, 1.0, 1.0), (1, 0.5, 0.75), (1, 0.75, 0.5), (2, 0.5, 0.5))


class ExportError(MidasOnnxError):
    """Export failed, or the exported file does not compute what PyTorch computes."""


@dataclass(frozen=True)
class ParityResult:
    """How far the ONNX file's output is from PyTorch's for one input shape (``check_parity``)."""

    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|: error relative to the output's range


def versions() -> dict[str, str]:
    """The versions that produced an export (this package, torch, timm, onnx, onnxruntime,
    opset), stored as ``export_versions`` metadata in every model file."""
    import onnx
    import onnxruntime
    import timm

    from midas_onnx import __version__

    return {
        "midas_onnx": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(OPSET),
    }


def export_onnx(
    model: torch.nn.Module,
    out_path: str | Path,
    input_hw: tuple[int, int] | None,
    checkpoint_sha256: str,
    *,
    force: bool = False,
    slim: bool = True,
    description: ModelDescription | None = None,
) -> Path:
    """Write ``model`` as ONNX to ``out_path``, with midas-onnx metadata embedded.

    ``description`` defaults to the network's own (``model.description``). ``input_hw=None``
    exports dynamic batch, height and width; otherwise H and W are fixed and only the batch
    is dynamic (so ``predict_batch`` can send one call per batch). The file appears only
    when complete (written beside it, then renamed), and an existing file is kept unless
    ``force``. Any failure of the exporter, onnxslim or the checker is one ``ExportError``.
    """
    import onnx

    description = description or model.description
    out_path = Path(out_path)
    if out_path.exists() and not force:
        raise ExportError(f"{out_path} exists; pass --force to overwrite it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = description.input.size
    tmp = temp_path_beside(out_path)
    try:
        _stage("torch.onnx.export", _trace_to_file, model, tmp, input_hw or (size, size), dynamic=input_hw is None)
        proto = onnx.load(str(tmp))
        if slim:
            import onnxslim

            proto = _stage("onnxslim", onnxslim.slim, proto)
        info = ModelInfo(
            input_hw=input_hw,
            checkpoint_sha256=checkpoint_sha256,
            extra={"export_versions": json.dumps(versions(), sort_keys=True), "weights_licence": description.licence},
            description=description,
        )
        set_metadata(proto, info.to_props())
        _stage("the onnx checker", onnx.checker.check_model, proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _trace_to_file(model: torch.nn.Module, path: Path, hw: tuple[int, int], dynamic: bool) -> None:
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    if dynamic:
        dynamic_axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 1: "height", 2: "width"},
        }
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (see module docstring); its notes on
        # constant folding and traced sizes are about its own passes, not the user's model.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, (torch.zeros(1, 3, *hw),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


def _stage(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, anything it raises one ``ExportError`` line (``runtime.errors.one_line``)."""
    return one_line(what, ExportError, fn, *args, **kwargs)


def check_parity(
    onnx_path: str | Path,
    model: torch.nn.Module,
    inputs: list[np.ndarray],
    max_rel: float = MAX_REL_ERROR,
) -> list[ParityResult]:
    """Run ``inputs`` through onnxruntime and PyTorch; fail past ``max_rel``.

    Checked in the order that makes failures readable (as optimum's ``_run_validation``):
    output names, then shapes, then values. Every result is logged with its max difference.
    """
    from runtime.model.session import create_session

    session = create_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    if names != [OUTPUT_NAME]:
        raise ExportError(f"{onnx_path}: outputs are {names}, expected [{OUTPUT_NAME!r}]")
    results = []
    for x in inputs:
        got = _stage(f"onnxruntime on input {x.shape}", session.run, None, {INPUT_NAME: x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        if got.shape != want.shape:
            raise ExportError(f"{onnx_path}: input {x.shape} gave {got.shape}, PyTorch gives {want.shape}")
        max_abs = float(np.abs(got - want).max())
        rel = max_abs / max(float(np.abs(want).max()), 1e-12)
        result = ParityResult(tuple(x.shape), max_abs, rel)
        log.info("parity %s: max abs %.3g, max rel %.3g", result.shape, max_abs, rel)
        results.append(result)
        if rel > max_rel:
            raise ExportError(
                f"{onnx_path} does not match PyTorch on input {x.shape}: max abs error "
                f"{max_abs:.3g}, relative {rel:.3g} > {max_rel:g}"
            )
    return results


def parity_inputs(input_hw: tuple[int, int] | None, seed: int = 0,
                  description: ModelDescription = MIDAS_SMALL) -> list[np.ndarray]:
    """Seeded N(0, 1) inputs (what normalised images look like) at the shapes to check:
    a fixed model's size (batches of 1 and 2), else ``check_shapes(description)``."""
    rng = np.random.default_rng(seed)
    shapes = check_shapes(description) if input_hw is None else ((1, *input_hw), (2, *input_hw))
    return [rng.standard_normal((n, 3, h, w)).astype(np.float32) for n, h, w in shapes]


def check_shapes(description: ModelDescription) -> list[tuple[int, int, int]]:
    """(batch, H, W) for a dynamic export's check: ``DYNAMIC_CHECK_FRACTIONS`` of the
    model's size, rounded to its multiple (MiDaS small: 256x256, 128x192, 192x128, 2 x 128x128)."""
    size, step = description.input.size, description.input.multiple_of
    return [(n, max(step, round(size * fh / step) * step), max(step, round(size * fw / step) * step))
            for n, fh, fw in DYNAMIC_CHECK_FRACTIONS]
