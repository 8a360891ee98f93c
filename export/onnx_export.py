"""PyTorch -> ONNX for MidasNet_small, then clean-up, metadata and verification.

Choices:

- Exporter: the TorchScript exporter (``dynamo=False``). The network is plain convolutions,
  clips, adds and resizes with static shapes apart from batch, height and width, which the
  TorchScript exporter writes in a few seconds; its graph is the one the parity checks
  below and the INT8 quantizer are verified on.
- Opset 17: every op here (Conv, Clip, Pad, Resize with align_corners) exists since opset
  11-13; 17 is the newest that onnxruntime's quantizer, OpenVINO and TensorRT all handle
  without caveats, and there is nothing in 18+ this network needs.
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

from runtime.errors import MidasOnnxError
from runtime.files import temp_path_beside
from runtime.metadata import INPUT_NAME, OUTPUT_NAME, ModelInfo, set_metadata

log = logging.getLogger(__name__)

OPSET = 17
# Provenance carried in every model file (and into its INT8 variants).
WEIGHTS_LICENCE = ("MIT: MiDaS v2.1 small weights by isl-org/MiDaS (holds for the official checkpoint; "
                   "see checkpoint_sha256 for which file this is)")
MAX_REL_ERROR = 1e-4
# Shapes checked after a dynamic export: square, landscape, portrait, and a batch of 2.
DYNAMIC_CHECK_SHAPES = ((1, 256, 256), (1, 256, 384), (1, 320, 192), (2, 192, 256))


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
) -> Path:
    """Write ``model`` as ONNX to ``out_path``, with midas-onnx metadata embedded.

    ``input_hw=None`` exports dynamic batch, height and width; otherwise H and W are fixed
    and only the batch is dynamic (so ``predict_batch`` can send one call per batch).
    The file appears only when complete (written beside it, then renamed), and an existing
    file is kept unless ``force``.
    """
    import onnx

    out_path = Path(out_path)
    if out_path.exists() and not force:
        raise ExportError(f"{out_path} exists; pass --force to overwrite it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = input_hw or (256, 256)
    dummy = torch.zeros(1, 3, h, w)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    if input_hw is None:
        dynamic_axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 1: "height", 2: "width"},
        }
    tmp = temp_path_beside(out_path)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose (see module docstring), and its
            # constant-folding notes are about its own passes, not the user's model.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        if slim:
            import onnxslim

            proto = onnxslim.slim(proto)
        info = ModelInfo(
            input_hw=input_hw,
            checkpoint_sha256=checkpoint_sha256,
            extra={"export_versions": json.dumps(versions(), sort_keys=True), "weights_licence": WEIGHTS_LICENCE},
        )
        set_metadata(proto, info.to_props())
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


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
    from runtime.session import create_session

    session = create_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    if names != [OUTPUT_NAME]:
        raise ExportError(f"{onnx_path}: outputs are {names}, expected [{OUTPUT_NAME!r}]")
    results = []
    for x in inputs:
        got = session.run(None, {INPUT_NAME: x})[0]
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


def parity_inputs(input_hw: tuple[int, int] | None, seed: int = 0) -> list[np.ndarray]:
    """Seeded N(0, 1) inputs (what normalised images look like) at the shapes to check."""
    rng = np.random.default_rng(seed)
    shapes = DYNAMIC_CHECK_SHAPES if input_hw is None else ((1, *input_hw), (2, *input_hw))
    return [rng.standard_normal((n, 3, h, w)).astype(np.float32) for n, h, w in shapes]
