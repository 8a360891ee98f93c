"""INT8 variants of a midas-onnx fp32 model with ``onnxruntime.quantization``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.model.cpu import PATH_TEXT, cpu_name, dot_product_flags, int8_flags, int8_layout, int8_path, layout_on_cpu
from runtime.errors import ModelError, one_line
from runtime.files import sha256_file, write_atomic
from runtime.heatmapper import read_model_info
from runtime.model.metadata import PREFIX, ModelInfo, set_metadata
from runtime.model.model_description import QuantRule, quantization_rule
from runtime.model.session import create_session

from . import builtin_photos, layers, report
from .calibration import MIN_RECOMMENDED, CalibrationError, ImageCalibrationReader, list_images, load_inputs
from .config import QuantConfig
from .photos import PhotoSet, empty

log = logging.getLogger(__name__)
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                 "MatMulInteger", "QLinearConv", "QLinearMatMul"}
HOLD_OUT_EVERY = 5  # without --eval, every 5th calibration file (sorted) is held out


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
    progress: bool = False,
    report_layers: bool = False,
    target_delta: float | None = None,
    measure_layers: int = layers.DEFAULT_MEASURE,
    input_size: int | None = None,
) -> QuantizeResult:
    """Quantize ``src`` to ``out`` and write ``<out>.report.json`` beside it.

    Static mode calibrates on ``calibration_dir`` (default: the built-in photos, see
    ``builtin_photos``), each photo at its own network shape, so a dynamic-size model gets
    scales that cover every shape users send. The report is computed on ``eval_dir``, or,
    without one, on photos held out of calibration whole (every 5th file of the folder; the
    built-in ``HELD_OUT`` photos). Dynamic mode needs images only for the report. Warnings
    (few calibration images) are raised before the work starts; ``progress`` shows a bar.

    ``report_layers``: a per-layer error table in the report (``quantize/layers.py``).
    ``target_delta``: keep the most harmful layers in fp32 until the worst search photo's
    δ<1.25 against fp32 reaches it (static only). The evaluation photos are split by source
    photo: the search sees one half, the report's figures come from the other.
    ``input_size``: calibrate, evaluate and time a dynamic-size model at this size of its
    rule (``--input-size``: calibrate at the size you will run) instead of its default.

    What is quantized comes from the model's description (``QuantRule``: op types, nodes
    kept in float). onnxruntime's own failures become one ``ModelError`` naming the step.
    """
    src, out = Path(src), Path(out)
    rep_path = report_path_for(out)
    for path in (out, rep_path):
        if path.exists() and not force:
            raise ModelError(f"{path} exists; pass --force to overwrite it")
    info, source_props = _check_source(src, input_size)
    sets = _images(config, info, calibration_dir, eval_dir)
    if target_delta is not None and (config.mode != "static" or not 0 < target_delta <= 1):
        raise ValueError("--target-delta needs static INT8 and a value in (0, 1]")
    if target_delta is not None and len(set(sets.evaluation.sources)) < 2:
        raise CalibrationError("--target-delta needs evaluation photos from at least two source photos: "
                               "the fallback is chosen on one half and reported on the other")
    if config.mode == "static" and len(sets.calibration) < MIN_RECOMMENDED:
        warnings.warn(
            f"calibrating on {len(sets.calibration)} images; use at least {MIN_RECOMMENDED} varied "
            "photos like the ones you will run on, or activation ranges may not cover them",
            stacklevel=2,
        )
    with tempfile.TemporaryDirectory(prefix="midas-quant-") as tmp:
        pre, q_tmp, exclude = _quantize(src, Path(tmp), config, info, sets.calibration, progress)
        diag = _diagnose(pre, q_tmp, sets.evaluation, threads, report_layers, target_delta, measure_layers,
                         work_shape(info))
        _write_model(q_tmp, out, src, source_props, config, info, sets, diag)
    result = _report(src, out, info, config, sets, exclude + diag.fallback_layers, diag, threads, latency_runs)
    write_atomic(rep_path, (json.dumps(result, indent=2) + "\n").encode())
    return QuantizeResult(out, rep_path, result)


def _quantize(src: Path, tmp: Path, config: QuantConfig, info: ModelInfo, calibration: PhotoSet,
              progress: bool) -> tuple[Path, Path, list[str]]:
    """(pre-processed fp32 model, quantized model, nodes kept in float by role and by the
    description's rule) in ``tmp``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_dynamic

    pre, q_out = tmp / "pre.onnx", tmp / "q.onnx"
    # skip_symbolic_shape: onnxruntime's symbolic shape pass cannot follow the decoder's x2
    # Resize on dynamic sizes ("Incomplete symbolic shape inference"); onnx's own shape
    # inference and the graph optimisation still run.
    _step("onnxruntime's quant_pre_process", quant_pre_process, str(src), str(pre), skip_symbolic_shape=True)
    rule = quantization_rule(info.description)
    exclude = keep_float_nodes(onnx.load(str(pre)), config.keep_float, rule)
    op_types = list(rule.op_types) or None  # None: every op type onnxruntime quantizes
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if config.mode != "static":
        _step("onnxruntime's quantize_dynamic", quantize_dynamic, str(pre), str(q_out), per_channel=config.per_channel,
              weight_type=types[config.weight_type], nodes_to_exclude=exclude, op_types_to_quantize=op_types,
              reduce_range=config.reduce_range)
        return pre, q_out, exclude
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    reader = ImageCalibrationReader(calibration.inputs, progress=progress)
    # onnxruntime's calibrators print their stages; the progress bar says it better.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from onnxruntime.quantization import quantize_static

            _step(
                "onnxruntime's quantize_static", quantize_static,
                str(pre), str(q_out), reader, quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                activation_type=types[config.activation_type], weight_type=types[config.weight_type],
                calibrate_method=methods[config.calibration], nodes_to_exclude=exclude,
                op_types_to_quantize=op_types, reduce_range=config.reduce_range,
                extra_options={"CalibPercentile": config.percentile,
                               "CalibStridedMinMax": ImageCalibrationReader.STRIDE},
            )
        finally:
            reader.close()
    return pre, q_out, exclude


@dataclass
class _Diagnosis:
    """What the layer report and fallback found, and which photos the final figures use."""

    report_photos: PhotoSet
    report_photos_from: str
    layer_table: dict | None = None
    fallback: dict | None = None

    @property
    def fallback_layers(self) -> list[str]:
        return self.fallback["layers"] if self.fallback else []


def _diagnose(pre: Path, q_tmp: Path, evaluation: PhotoSet, threads: int | None, report_layers: bool,
              target_delta: float | None, measure: int, hw: tuple[int, int]) -> _Diagnosis:
    """Layer table and fallback choice. With a target the evaluation photos are split by source:
    the table and the search use one half; the report's figures (and full INT8's on the same
    photos, for comparison) come from the other. The chosen model replaces ``q_tmp``."""
    import onnx

    if target_delta is None:
        table = layers.layer_report(pre, q_tmp, evaluation, threads, measure) if report_layers else None
        return _Diagnosis(evaluation, "held out from calibration", table)
    search, held = evaluation.split_by_source()  # two sources at least: checked before calibrating
    table = layers.layer_report(pre, q_tmp, search, threads, measure)
    fallback = layers.choose_fallback(pre, q_tmp, search, table["layers"], target_delta, hw, threads)
    fp32 = create_session(pre, threads=threads)
    fallback["full_int8_on_report_photos"] = report.fidelity(fp32, create_session(q_tmp, threads=threads),
                                                             held.inputs, held.names)
    if fallback["layers"]:
        # The model measured is the model written: the QDQ file with the chosen convs reading
        # float inputs and weights, every other scale as calibrated.
        chosen = layers.keep_float(onnx.load(str(q_tmp)), onnx.load(str(pre)), fallback["layers"])
        onnx.save(chosen, str(q_tmp))
    return _Diagnosis(held, "held out from calibration and from the fallback search", table, fallback)


def _write_model(q_tmp: Path, out: Path, src: Path, source_props: dict[str, str], config: QuantConfig,
                 info: ModelInfo, sets: "_ImageSets", diag: _Diagnosis) -> None:
    """The quantized model with the source's metadata and its own provenance."""
    import onnx

    proto = onnx.load(str(q_tmp))
    props = dict(source_props)
    props[PREFIX + "precision"] = f"int8-{config.mode}"
    props[PREFIX + "quantization"] = config.to_json()
    props[PREFIX + "int8_layout"] = int8_layout(config.to_dict())
    props[PREFIX + "quantized_on"] = machine_text()
    props[PREFIX + "source_model_sha256"] = sha256_file(src)
    if PREFIX + "description" in props:  # the rule it was quantized by; every other field as the source wrote it
        description = json.loads(props[PREFIX + "description"])
        description["quantization"] = asdict(quantization_rule(info.description))
        props[PREFIX + "description"] = json.dumps(description, sort_keys=True)
    if config.mode == "static":
        props[PREFIX + "calibration"] = f"{len(sets.calibration)} images: {sets.calibration_source}"
        props[PREFIX + "calibration_input_size"] = info.input_size_text if info.input_hw else str(info.description.input.size)
    if diag.fallback is not None:
        props[PREFIX + "fallback_layers"] = json.dumps(diag.fallback["layers"])
        props[PREFIX + "fallback_target_delta1"] = str(diag.fallback["target_worst_delta1"])
    set_metadata(proto, props)
    write_atomic(out, proto.SerializeToString())


def _report(src: Path, out: Path, info: ModelInfo, config: QuantConfig, sets: "_ImageSets", kept_float: list[str],
            diag: _Diagnosis, threads: int | None, latency_runs: int) -> dict:
    """Sizes, fidelity on the photos nothing was chosen on, latency of both models, the CPU."""
    fp32 = create_session(src, threads=threads)
    int8 = create_session(out, threads=threads)
    lat = report.latencies({"fp32": fp32, "int8": int8}, report.timing_shapes(info), runs=latency_runs)
    fidelity = report.fidelity(fp32, int8, diag.report_photos.inputs, diag.report_photos.names)
    fidelity["photos_from"] = diag.report_photos_from
    result = {
        "model": str(out),
        "source_model": str(src),
        "precision": f"int8-{config.mode}",
        "config": config.to_dict(),
        "kept_float_nodes": kept_float,
        "calibration_images": len(sets.calibration),
        "input_size": info.input_size_text if info.input_hw else info.description.input.size,
        "calibration_source": sets.calibration_source,
        "calibration_photos": sorted(set(sets.calibration.sources)),
        "evaluation_source": sets.evaluation_source,
        "unreadable_images": sets.skipped,
        "size_bytes": {"fp32": src.stat().st_size, "int8": out.stat().st_size},
        "fidelity_vs_fp32": fidelity,
        "latency_ms": lat,
        "speedup_vs_fp32": {shape: r["fp32"]["median_ms"] / r["int8"]["median_ms"] for shape, r in lat.items()},
        "threads": threads or "physical cores",
        "cpu": {"name": cpu_name(), "int8_flags": int8_flags(), "int8_path": int8_path()},
    }
    layout = int8_layout(config.to_dict())
    result["int8_layout"] = {"layout": layout, "on_this_cpu": layout_on_cpu(layout)}
    result["speed_verdict"] = speed_verdict(result)
    if diag.layer_table is not None:
        result["layers"] = diag.layer_table
    if diag.fallback is not None:
        result["fallback"] = diag.fallback
    return result


MIN_USEFUL_SPEEDUP = 1.2


def machine_text() -> str:
    """The CPU that quantized and measured a file, its INT8 flags and integer path, as one line
    for the file's metadata (``midas_onnx.quantized_on``)."""
    return f"{cpu_name()}; flags: {' '.join(int8_flags()) or 'none listed'}; integer path: {int8_path()}"


def speed_verdict(result: dict) -> str | None:
    """Plain words when INT8 is not worth it on this machine (under 1.2x fp32 at some shape),
    naming the CPU features that decide it; None when it is."""
    slowest = min(result["speedup_vs_fp32"].values())
    if slowest >= MIN_USEFUL_SPEEDUP:
        return None
    flags = result["cpu"]["int8_flags"]
    dot = dot_product_flags(flags)
    why = (f"this CPU has INT8 dot-product instructions ({', '.join(dot)})" if dot else
           "this CPU has no INT8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or ARM dot-product), "
           f"only {', '.join(flags) or 'none of the listed features'}")
    return (f"INT8 is not worth it here: {slowest:.2f}x the speed of fp32 at its slowest shape (under "
            f"{MIN_USEFUL_SPEEDUP}x); {why}. Keep the fp32 model on this machine, or check the kept-float "
            "layers in the report.")


def _check_source(src: Path, input_size: int | None) -> tuple[ModelInfo, dict[str, str]]:
    """Only our fp32 exports: not foreign models, not already-quantized ones.
    Returns the parsed info (at ``input_size``, if given) and the raw metadata, carried into
    the quantized file."""
    import onnx

    session = create_session(src, threads=1)
    info = read_model_info(session, src, input_size)
    if info.precision != "fp32":
        raise ModelError(f"{src} is already quantized ({info.precision}); quantize the fp32 export instead")
    ops = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    if ops & QUANTIZED_OPS:
        raise ModelError(f"{src} already contains quantized ops ({', '.join(sorted(ops & QUANTIZED_OPS))})")
    return info, dict(session.get_modelmeta().custom_metadata_map)


def _images(config: QuantConfig, info: ModelInfo, calibration_dir, eval_dir) -> "_ImageSets":
    """Calibration inputs, held-out evaluation inputs, unreadable-file messages, and where
    each set came from. Without ``calibration_dir`` the built-in photos are used; without
    ``eval_dir`` whole source photos are held out of calibration for the report."""
    if calibration_dir is not None:
        calib_items = _folder_items(calibration_dir)
        calib_source = str(calibration_dir)
    else:
        calib_items = [(name, builtin_photos.source(name), a) for name, a in builtin_photos.load()]
        calib_source = builtin_photos.DESCRIPTION
    eval_items = _folder_items(eval_dir) if eval_dir is not None else []
    eval_source = str(eval_dir) if eval_dir is not None else ""
    skipped: list[str] = []
    calib = empty()
    if config.mode == "static":
        if not calib_items:
            raise CalibrationError(f"static INT8 needs calibration images, and {calibration_dir} has none")
        if not eval_items:
            calib_items, eval_items, eval_source = _hold_out(calib_items, calibration_dir is None)
        calib, skipped = load_inputs(calib_items, info, "calibration")
        _check_held_out(calib_items, eval_items)
    elif not eval_items:
        eval_items, eval_source = calib_items, calib_source
    evals, errors = load_inputs(eval_items, info, "evaluation")
    return _ImageSets(calib, evals, skipped + errors, calib_source if config.mode == "static" else "", eval_source)


def _folder_items(folder) -> list[tuple[str, str, Path]]:
    """(name, source photo, path) of a folder's images. A file directly in the folder is its
    own source photo; the files of one sub-folder are one source photo together (put crops
    of one photo in one sub-folder, so a held-out split never cuts between them)."""
    root = Path(folder).resolve()
    items = []
    for path in list_images(folder):
        rel = path.resolve().relative_to(root)
        items.append((str(rel), str(root / rel.parts[0]), path))
    return items


def _hold_out(items: list, builtin: bool) -> tuple[list, list, str]:
    """(calibration, held-out, description): whole source photos held out, never single crops."""
    if builtin:
        held = set(builtin_photos.HELD_OUT)
        how = f"built-in photos held out of calibration whole: {', '.join(builtin_photos.HELD_OUT)}"
    else:
        if len(items) < 2:
            raise CalibrationError("need at least 2 images to hold one out for the report, or pass --eval DIR")
        held = set(list(dict.fromkeys(source for _, source, _ in items))[::HOLD_OUT_EVERY])
        how = f"every {HOLD_OUT_EVERY}th image of the calibration set, held out"
    return [i for i in items if i[1] not in held], [i for i in items if i[1] in held], how


def _check_held_out(calib_items: list, eval_items: list) -> None:
    """No evaluation photo may be a calibration photo: same path or same bytes (a copy)."""
    calib_files = [i[2] for i in calib_items if isinstance(i[2], Path)]
    eval_files = [i[2] for i in eval_items if isinstance(i[2], Path)]
    overlap = {p.resolve() for p in calib_files} & {p.resolve() for p in eval_files}
    if not overlap and calib_files and eval_files:
        overlap = {sha256_file(p) for p in calib_files} & {sha256_file(p) for p in eval_files}
    if overlap:
        raise CalibrationError(f"evaluation images must be held out from calibration; {len(overlap)} are in both "
                               "(same path or same content)")


@dataclass(frozen=True)
class _ImageSets:
    calibration: PhotoSet
    evaluation: PhotoSet
    skipped: list[str]
    calibration_source: str
    evaluation_source: str


def keep_float_nodes(proto, roles: tuple[str, ...], rule: QuantRule = QuantRule()) -> list[str]:
    """Node names kept in fp32: those of the roles asked for ("stem" = the first Conv, "head" =
    the last three Convs, the output head: found by position, so renamed nodes do not matter;
    "all" = every node of the op types the rule quantizes) and those the description's rule
    keeps in float (``QuantRule.float_nodes``, patterns on node names)."""
    work_types = rule.op_types or ("Conv",)
    if "all" in roles:
        return [n.name for n in proto.graph.node if n.op_type in work_types]
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    names = [n.name for n in proto.graph.node
             if n.op_type in work_types and any(re.search(p, n.name) for p in rule.float_nodes)]
    for pattern in rule.float_nodes:  # a graph whose names differ would be quantized whole, silently
        if not any(re.search(pattern, n.name) for n in proto.graph.node if n.op_type in work_types):
            log.warning("the model's rule keeps %r in float, but no %s node's name matches it",
                        pattern, "/".join(work_types))
    if "stem" in roles:
        names += convs[:1]
    if "head" in roles:
        names += convs[-3:]
    return list(dict.fromkeys(names))


def work_shape(info: ModelInfo) -> tuple[int, int]:
    """Where multiply-adds are counted: a fixed model's size, a dynamic one's size square."""
    return info.input_hw or (info.description.input.size,) * 2


def _step(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, anything it raises one ``ModelError`` line (``runtime.errors.one_line``)."""
    return one_line(what, ModelError, fn, *args, **kwargs)


def _photo_list(names: list[str], show: int = 6) -> str:
    return ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")


def _db(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.1f}dB"  # NaN: no weights (a product of activations)


def describe(result: dict) -> str:
    """The report as a few lines a person reads."""
    f = result["fidelity_vs_fp32"]
    size = result["size_bytes"]
    lines = [
        f"{result['precision']} model: {result['model']}",
        f"  size          fp32 {size['fp32'] / 1e6:6.1f} MB   int8 {size['int8'] / 1e6:6.1f} MB",
    ]
    for shape, lat in result["latency_ms"].items():
        lines.append(f"  latency {shape:>7}  fp32 {lat['fp32']['median_ms']:6.1f} ms   int8 {lat['int8']['median_ms']:6.1f} ms "
                     f"(median of {lat['int8']['runs']}, speed-up {result['speedup_vs_fp32'][shape]:.2f}x)")
    lines.append(f"  fidelity      on {f['images']} images {f['photos_from']}, after scale-and-shift alignment to fp32: "
                 f"AbsRel mean {f['mean_absrel']:.4f} worst {f['worst_absrel']:.4f}, "
                 f"delta<1.25 mean {f['mean_delta1']:.4f} worst {f['worst_delta1']:.4f} ({f['worst_photo']})")
    lines.append(f"                photos: {_photo_list(f['photos'])}")
    if len(f["by_shape"]) > 1:
        lines.append("                by network shape: " + ", ".join(
            f"{shape} ({g['images']}) delta<1.25 {g['mean_delta1']:.4f}" for shape, g in f["by_shape"].items()))
    if result["calibration_images"]:
        lines.append(f"  calibration   {result['calibration_images']} images ({result['calibration_source']}); "
                     f"kept in float: {', '.join(result['kept_float_nodes']) or 'nothing'}")
    lines.append(f"  evaluation    {result['evaluation_source']}")
    if result.get("layers"):
        lt = result["layers"]
        lines.append(f"  layers        {len(lt['layers'])} quantized layers on {lt['images']} photos ({lt['seconds']:.0f} s: "
                     f"{_photo_list(lt['photos'])}); "
                     f"most harmful first (δ gain when kept in fp32, measured for the {lt['measured']} lowest-SQNR):")
        lines.append(f"    {'rank':>4}  {'δ gain':>7}  {'act SQNR':>8}  {'w SQNR':>6}  {'role':<36} name")
        for row in lt["layers"][:10]:
            gain = row.get("delta1_gain_if_float")
            lines.append(f"    {row['rank']:>4}  {'' if gain is None else f'{gain:+.4f}':>7}  "
                         f"{_db(row['activation_sqnr_db']):>9}  {_db(row['weight_sqnr_db']):>6}  {row['role']:<36} {row['name']}")
    if result.get("fallback"):
        fb = result["fallback"]
        full = fb["full_int8_on_report_photos"]
        lines.append(f"  fallback      target worst-photo δ<1.25 >= {fb['target_worst_delta1']} on the search photos "
                     f"({_photo_list(fb['search_photos'])}): {fb['reason']}; {len(fb['layers'])} layers kept in fp32 "
                     f"({fb['int8_work_kept']:.1%} of the multiply-adds left in INT8), search worst δ {fb['search_worst_delta1']:.4f}")
        lines.append(f"                on the report photos: worst δ {f['worst_delta1']:.4f} with fallback, "
                     f"{full['worst_delta1']:.4f} full INT8")
    cpu = result["cpu"]
    lines.append(f"  cpu           {cpu['name']} ({' '.join(cpu['int8_flags']) or 'no INT8 features listed'}); "
                 f"integer path: {PATH_TEXT[cpu['int8_path']]}")
    lines.append(f"  int8 layout   {result['int8_layout']['layout']}: {result['int8_layout']['on_this_cpu']}")
    if result.get("speed_verdict"):
        lines.append(f"  verdict       {result['speed_verdict']}")
    return "\n".join(lines)
