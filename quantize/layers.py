"""Where INT8 error comes from, layer by layer, and which layers to keep in fp32.

Per-layer report (``--report-layers``): onnxruntime's ``quantization.qdq_loss_debug``
matches every quantized conv's output between the fp32 model and the QDQ model on the
evaluation photos (activation SQNR: how much error has built up at that point) and compares
each conv's weights before and after quantization (weight SQNR). Then the error each layer
adds to the final depth is measured directly: the QDQ model with that one conv fed its
float input and float weights (what ``nodes_to_exclude`` would give, without recalibrating)
is run on the photos, and its worst-photo δ<1.25 against fp32 is compared with full INT8's.
That is measured for the ``measure`` layers with the lowest activation SQNR (the others are
ranked by SQNR only): most harmful first.

Fallback (``--target-delta D``): the most harmful layers are kept in fp32 one at a time, in
that order, until the worst evaluation photo reaches δ<1.25 >= D, or keeping more would cost
more than half of the INT8 speed-up, or the next layers would not raise δ any further; the
report says which. The chosen layers are then excluded in a real ``quantize_static`` run.
Everything is deterministic for the same model and photos.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.metadata import INPUT_NAME

from . import report

DEFAULT_MEASURE = 16  # layers whose depth impact is measured (lowest activation SQNR first): 40 photos in < 2 min


def role(node_name: str) -> str:
    """Where a conv sits in MiDaS small, from the exporter's node name."""
    if m := re.match(r"^/layer(\d)_rn/", node_name):
        return f"decoder: reassemble {m.group(1)}"
    if m := re.match(r"^/refinenet(\d)/", node_name):
        return f"decoder: refinenet {m.group(1)}"
    if node_name.startswith("/output_conv/"):
        return "head"
    if m := re.match(r"^/layer(\d)/", node_name):
        kind = next((k for k in ("conv_dw", "conv_pwl", "conv_pw") if f"/{k}/" in node_name), "stem")
        label = {"conv_dw": "depthwise", "conv_pw": "expand", "conv_pwl": "project", "stem": "stem"}[kind]
        return f"backbone stage {m.group(1)} ({label})"
    return "other"


def _sqnr(x, y) -> float:
    """SQNR in dB over lists of arrays of any shapes (photos come at several network shapes)."""
    left = np.concatenate([np.asarray(a, np.float64).ravel() for a in x])
    right = np.concatenate([np.asarray(a, np.float64).ravel() for a in y])
    eps = np.finfo(np.float64).eps
    return 20 * math.log10(max(np.linalg.norm(left), eps) / max(np.linalg.norm(left - right), eps))


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def _reader(inputs: list[np.ndarray]):
    """The evaluation inputs as onnxruntime's data reader (one photo at a time, own shapes)."""
    from .calibration import ImageCalibrationReader

    return ImageCalibrationReader(inputs)


def activation_and_weight_sqnr(float_path: Path, qdq_path: Path, inputs: list[np.ndarray]) -> dict[str, dict]:
    """conv name -> {"output": tensor, "activation_sqnr_db", "weight_sqnr_db"} for every quantized conv."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    qdq = onnx.load(str(qdq_path))
    convs = [n for n in qdq.graph.node if n.op_type == "Conv" and _is_quantized(qdq, n)]
    with tempfile.TemporaryDirectory(prefix="midas-layers-") as tmp:
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(float_path), str(f_aug), op_types_for_saving=["Conv"])
        modify_model_output_intermediate_tensors(str(qdq_path), str(q_aug), op_types_for_saving=["Conv"])
        float_acts = collect_activations(str(f_aug), _reader(inputs))
        qdq_acts = collect_activations(str(q_aug), _reader(inputs))
    matched = create_activation_matching(qdq_acts, float_acts)
    act_err = compute_activation_error(matched, err_func=_sqnr)
    weights = create_weight_matching(str(float_path), str(qdq_path))
    out = {}
    for node in convs:
        y = node.output[0]
        w_name = _float_weight_name(qdq, node)
        w = weights.get(w_name, {})
        if "xmodel_err" in act_err.get(y, {}):  # the conv's output has its own Q/DQ pair
            act = act_err[y]["xmodel_err"]
        else:  # its output goes on in float (into an Add, say): compare it by name
            act = _sqnr(float_acts[y], qdq_acts[y]) if y in float_acts and y in qdq_acts else None
        out[node.name] = {
            "output": y,
            "activation_sqnr_db": act,  # None: the debug outputs did not capture it (a fused final conv)
            "weight_sqnr_db": float(_sqnr([w["float"]], [w["dequantized"]])) if "float" in w else float("nan"),
        }
    return out


def _producers(model) -> dict[str, object]:
    return {o: n for n in model.graph.node for o in n.output}


def _is_quantized(model, conv) -> bool:
    prod = _producers(model)
    return any(getattr(prod.get(i), "op_type", "") == "DequantizeLinear" for i in conv.input[:2])


def _float_weight_name(model, conv) -> str:
    prod = _producers(model).get(conv.input[1])
    name = prod.input[0] if prod is not None and prod.op_type == "DequantizeLinear" else conv.input[1]
    return name.removesuffix("_quantized")


def keep_float(qdq_proto, float_proto, conv_names: list[str]):
    """A copy of the QDQ model in which the named convs read their float input and float
    weights and bias (their output stays quantized for the layers after them), as
    ``nodes_to_exclude`` would make them, with every other scale left as calibrated."""
    import copy

    model = copy.deepcopy(qdq_proto)
    prod = _producers(model)
    floats = {t.name: t for t in float_proto.graph.initializer}
    float_convs = {n.name: n for n in float_proto.graph.node if n.op_type == "Conv"}
    have = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in conv_names:
            continue
        original = float_convs[node.name]
        dq = prod.get(node.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[0] = q.input[0]  # the float activation
        for k in range(1, len(node.input)):
            name = original.input[k]
            if name not in floats:
                continue
            alias = f"{name}__fp32"  # the QDQ graph may already use the float name for a DQ output
            if alias not in have:
                tensor = copy.deepcopy(floats[name])
                tensor.name = alias
                model.graph.initializer.append(tensor)
                have.add(alias)
            node.input[k] = alias
    _drop_dead_nodes(model)
    return model


def _drop_dead_nodes(model) -> None:
    """Remove nodes whose outputs nobody reads (the chosen convs' old Q/DQ and weight DQ),
    and initializers no node reads any more, so the file holds only what runs."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)


def _worst(scores: list[tuple[float, float]]) -> tuple[float, float]:
    """(worst AbsRel, worst delta1) over photos."""
    return max(s[0] for s in scores), min(s[1] for s in scores)


def evaluate(session, refs: list[np.ndarray], inputs: list[np.ndarray]) -> dict:
    scores = [report.compare(session.run(None, {INPUT_NAME: x})[0], r) for x, r in zip(inputs, refs, strict=True)]
    worst_absrel, worst_delta = _worst(scores)
    return {"worst_delta1": worst_delta, "mean_delta1": float(np.mean([s[1] for s in scores])),
            "worst_absrel": worst_absrel, "mean_absrel": float(np.mean([s[0] for s in scores]))}


def _session(proto, threads: int | None):
    import onnxruntime as ort

    from runtime.session import PROVIDER

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=[PROVIDER])


def _latency_ms(session, x: np.ndarray, runs: int = 8) -> float:
    for _ in range(2):
        session.run(None, {INPUT_NAME: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def layer_report(float_path: Path, qdq_path: Path, inputs: list[np.ndarray], threads: int | None = None,
                 measure: int = DEFAULT_MEASURE) -> dict:
    """Every quantized conv: name, op, role, activation and weight SQNR, and (for the
    ``measure`` lowest-SQNR ones) the worst-photo δ<1.25 gained by keeping it in fp32;
    ranked most harmful first."""
    import onnx

    t0 = time.perf_counter()
    float_proto, qdq_proto = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    fp32 = _session(float_proto, threads)
    refs = [fp32.run(None, {INPUT_NAME: x})[0] for x in inputs]
    base = evaluate(_session(qdq_proto, threads), refs, inputs)
    sqnr = activation_and_weight_sqnr(float_path, qdq_path, inputs)
    order = sorted(sqnr, key=lambda n: (_or_inf(sqnr[n]["activation_sqnr_db"]), n))
    layers = []
    for i, name in enumerate(order):
        row = {"name": name, "op": "Conv", "role": role(name), **{k: v for k, v in sqnr[name].items() if k != "output"}}
        if i < measure:
            fixed = evaluate(_session(keep_float(qdq_proto, float_proto, [name]), threads), refs, inputs)
            row["delta1_gain_if_float"] = fixed["worst_delta1"] - base["worst_delta1"]
            row["absrel_drop_if_float"] = base["worst_absrel"] - fixed["worst_absrel"]
        layers.append(row)
    layers.sort(key=lambda r: (-r.get("delta1_gain_if_float", -math.inf), -r.get("absrel_drop_if_float", -math.inf),
                               _or_inf(r["activation_sqnr_db"]), r["name"]))
    for rank, row in enumerate(layers, start=1):
        row["rank"] = rank
    return {"int8_worst_delta1": base["worst_delta1"], "int8_worst_absrel": base["worst_absrel"],
            "images": len(inputs), "measured": min(measure, len(layers)), "layers": layers,
            "seconds": time.perf_counter() - t0}


def choose_fallback(float_path: Path, qdq_path: Path, inputs: list[np.ndarray], layers: list[dict],
                    target_delta: float, threads: int | None = None, max_steps: int = 12) -> dict:
    """Keep the most harmful layers in fp32, in rank order, until the worst photo's δ<1.25
    reaches ``target_delta``; stop early when keeping more would cost more than half of the
    INT8 speed-up, or when the next layers give no gain. Returns the choice and why."""
    import onnx

    float_proto, qdq_proto = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    fp32 = _session(float_proto, threads)
    refs = [fp32.run(None, {INPUT_NAME: x})[0] for x in inputs]
    x_time = inputs[0]
    fp32_ms = _latency_ms(fp32, x_time)
    int8_session = _session(qdq_proto, threads)
    int8_ms = _latency_ms(int8_session, x_time)
    current = evaluate(int8_session, refs, inputs)
    chosen: list[str] = []
    steps = []
    reason = ""
    candidates = [r["name"] for r in layers if r.get("delta1_gain_if_float", 0) > 0]
    for name in candidates[:max_steps]:
        if current["worst_delta1"] >= target_delta:
            break
        trial = chosen + [name]
        session = _session(keep_float(qdq_proto, float_proto, trial), threads)
        result = evaluate(session, refs, inputs)
        ms = _latency_ms(session, x_time)
        kept_speedup = (fp32_ms - ms) / max(fp32_ms - int8_ms, 1e-9)  # share of INT8's gain still there
        steps.append({"layer": name, "worst_delta1": result["worst_delta1"], "latency_ms": ms,
                      "share_of_int8_speedup_kept": kept_speedup})
        if kept_speedup < 0.5:
            reason = "stopped: keeping this layer in fp32 would cost more than half of the INT8 speed-up"
            break
        if result["worst_delta1"] > current["worst_delta1"]:  # kept only when it helps
            chosen, current = trial, result
    if not reason:
        reason = ("target met" if current["worst_delta1"] >= target_delta else
                  "stopped: falling back stops paying (no further measured layer raises the worst photo's δ)")
    return {"target_worst_delta1": target_delta, "layers": chosen, "reached_worst_delta1": current["worst_delta1"],
            "met": current["worst_delta1"] >= target_delta, "reason": reason, "steps": steps,
            "fp32_ms": fp32_ms, "int8_ms": int8_ms}

