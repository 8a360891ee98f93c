"""INT8 variants of a midas-onnx fp32 model with ``onnxruntime.quantization``."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ModelError
from runtime.files import sha256_file, write_atomic
from runtime.heatmapper import read_model_info
from runtime.metadata import PREFIX, ModelInfo, set_metadata
from runtime.session import create_session

from . import report
from .calibration import MIN_RECOMMENDED, CalibrationError, ImageCalibrationReader, list_images, load_inputs
from .config import QuantConfig

log = logging.getLogger(__name__)
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                 "MatMulInteger", "QLinearConv", "QLinearMatMul"}
HOLD_OUT_EVERY = 5  # without --eval, every 5th calibration image (sorted) is held out


@dataclass(frozen=True)
class QuantizeResult:
    model_path: Path
    report_path: Path
    report: dict


def report_path_for(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.removesuffix(".onnx") + ".report.json")


def quantize_model(
    src: str | Path,
    out: str | Path,
    config: QuantConfig,
    calibration_dir: str | Path | None = None,
    eval_dir: str | Path | None = None,
    *,
    force: bool = False,
    threads: int | None = None,
    latency_runs: int = 20,
) -> QuantizeResult:
    """Quantize ``src`` to ``out`` and write ``<out>.report.json`` beside it.

    Static mode calibrates on ``calibration_dir``; the report is computed on ``eval_dir``, or,
    without one, on every 5th calibration image, which is then *not* used for calibration.
    Dynamic mode needs images only for the report (``eval_dir``, else ``calibration_dir``).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    src, out = Path(src), Path(out)
    rep_path = report_path_for(out)
    for path in (out, rep_path):
        if path.exists() and not force:
            raise ModelError(f"{path} exists; pass --force to overwrite it")
    info, source_props = _check_source(src)
    if config.mode == "static" and info.dynamic:
        raise ModelError(
            f"{src} is a dynamic-size model; static INT8 needs a fixed input size (a QDQ file of "
            "the dynamic export fails at run time at every size in onnxruntime). Export one with "
            "`midas-onnx export --size 256x256` and quantize that."
        )
    calib_inputs, eval_inputs, skipped = _images(config, info, calibration_dir, eval_dir)
    if config.mode == "static" and len(calib_inputs) < MIN_RECOMMENDED:
        warnings.warn(
            f"calibrating on {len(calib_inputs)} images; use at least {MIN_RECOMMENDED} varied "
            "photos like the ones you will run on, or activation ranges may not cover them",
            stacklevel=2,
        )

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="midas-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # skip_symbolic_shape: timm's TF-"same" padding computes pads from shapes, which the
        # symbolic shape pass cannot follow; onnx's own shape inference still runs.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        exclude = keep_float_nodes(onnx.load(str(pre)), config.keep_float)
        q_tmp = Path(tmp) / "q.onnx"
        if config.mode == "static":
            methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
            quantize_static(
                str(pre), str(q_tmp), ImageCalibrationReader(calib_inputs),
                quant_format=QuantFormat.QDQ,
                per_channel=config.per_channel,
                activation_type=types[config.activation_type],
                weight_type=types[config.weight_type],
                calibrate_method=methods[config.calibration],
                nodes_to_exclude=exclude,
                extra_options={"CalibPercentile": config.percentile},
            )
        else:
            quantize_dynamic(str(pre), str(q_tmp), per_channel=config.per_channel,
                             weight_type=types[config.weight_type], nodes_to_exclude=exclude)
        proto = onnx.load(str(q_tmp))
        props = dict(source_props)
        props[PREFIX + "precision"] = f"int8-{config.mode}"
        props[PREFIX + "quantization"] = config.to_json()
        props[PREFIX + "source_model_sha256"] = sha256_file(src)
        set_metadata(proto, props)
        write_atomic(out, proto.SerializeToString())

    fp32 = create_session(src, threads=threads)
    int8 = create_session(out, threads=threads)
    lat = report.latencies({"fp32": fp32, "int8": int8}, eval_inputs[0], runs=latency_runs)
    result = {
        "model": str(out),
        "source_model": str(src),
        "precision": f"int8-{config.mode}",
        "config": config.to_dict(),
        "kept_float_nodes": exclude,
        "calibration_images": len(calib_inputs),
        "unreadable_images": skipped,
        "size_bytes": {"fp32": src.stat().st_size, "int8": out.stat().st_size},
        "fidelity_vs_fp32": report.fidelity(fp32, int8, eval_inputs),
        "latency_ms": lat,
        "speedup_vs_fp32": lat["fp32"]["median_ms"] / lat["int8"]["median_ms"],
        "threads": threads or "physical cores",
        "input_shape": list(eval_inputs[0].shape),
    }
    write_atomic(rep_path, (json.dumps(result, indent=2) + "\n").encode())
    return QuantizeResult(out, rep_path, result)


def _check_source(src: Path) -> tuple[ModelInfo, dict[str, str]]:
    """Only our fp32 exports: not foreign models, not already-quantized ones.
    Returns the parsed info and the raw metadata, carried into the quantized file."""
    import onnx

    session = create_session(src, threads=1)
    info = read_model_info(session, src)
    if info.precision != "fp32":
        raise ModelError(f"{src} is already quantized ({info.precision}); quantize the fp32 export instead")
    ops = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    if ops & QUANTIZED_OPS:
        raise ModelError(f"{src} already contains quantized ops ({', '.join(sorted(ops & QUANTIZED_OPS))})")
    return info, dict(session.get_modelmeta().custom_metadata_map)


def _images(config: QuantConfig, info: ModelInfo, calibration_dir, eval_dir):
    """(calibration inputs, held-out evaluation inputs, unreadable-file messages)."""
    skipped: list[str] = []
    calib_paths = list_images(calibration_dir) if calibration_dir is not None else []
    eval_paths = list_images(eval_dir) if eval_dir is not None else []
    if config.mode == "static":
        if not calib_paths:
            raise CalibrationError(
                "static INT8 needs calibration images: pass --calibration DIR with photos like the "
                "ones you will run on" + (f" ({calibration_dir} has none)" if calibration_dir else "")
            )
        if not eval_paths:
            if len(calib_paths) < 2:
                raise CalibrationError("need at least 2 images to hold one out for the report, or pass --eval DIR")
            eval_paths = calib_paths[::HOLD_OUT_EVERY]
            calib_paths = [p for i, p in enumerate(calib_paths) if i % HOLD_OUT_EVERY]
        overlap = {p.resolve() for p in calib_paths} & {p.resolve() for p in eval_paths}
        if overlap:
            raise CalibrationError(f"evaluation images must be held out from calibration; {len(overlap)} are in both")
        calib, errors = load_inputs(calib_paths, info, "calibration")
        skipped += errors
    else:
        calib = []
        eval_paths = eval_paths or calib_paths
        if not eval_paths:
            raise CalibrationError("the fidelity report needs images: pass --eval DIR (or --calibration DIR)")
    evals, errors = load_inputs(eval_paths, info, "evaluation")
    skipped += errors
    return calib, evals, skipped


def keep_float_nodes(proto, roles: tuple[str, ...]) -> list[str]:
    """Node names for the roles kept in fp32: "stem" = the first Conv, "head" = the last three
    Convs (the output head). Found by position, so renamed nodes do not matter."""
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    names: list[str] = []
    if "stem" in roles:
        names += convs[:1]
    if "head" in roles:
        names += convs[-3:]
    return names


def describe(result: dict) -> str:
    """The report as a few lines a person reads."""
    f = result["fidelity_vs_fp32"]
    lat = result["latency_ms"]
    size = result["size_bytes"]
    return "\n".join([
        f"{result['precision']} model: {result['model']}",
        f"  size          fp32 {size['fp32'] / 1e6:6.1f} MB   int8 {size['int8'] / 1e6:6.1f} MB",
        f"  latency       fp32 {lat['fp32']['median_ms']:6.1f} ms   int8 {lat['int8']['median_ms']:6.1f} ms "
        f"(median of {lat['int8']['runs']}, input {'x'.join(map(str, result['input_shape']))}, "
        f"speed-up {result['speedup_vs_fp32']:.2f}x)",
        f"  fidelity      on {f['images']} held-out images, after scale-and-shift alignment to fp32: "
        f"AbsRel mean {f['mean_absrel']:.4f} worst {f['worst_absrel']:.4f}, "
        f"delta<1.25 mean {f['mean_delta1']:.4f} worst {f['worst_delta1']:.4f}",
        f"  calibration   {result['calibration_images']} images; kept in float: "
        f"{', '.join(result['kept_float_nodes']) or 'nothing'}",
    ])
