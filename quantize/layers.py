"""Where INT8 error comes from, layer by layer, and which layers to keep in fp32.

Per-layer report (``--report-layers``): every quantized node's output (the multiply-add
nodes, ``WORK_OPS``: convs, and a ViT's matrix products) is compared between
the fp32 and the QDQ model, photo by photo (activation SQNR: how much error has built up at
that point), and each node's weights before and after quantization (weight SQNR, from
onnxruntime's ``quantization.qdq_loss_debug.create_weight_matching``). The activations are
streamed: both models run one photo at a time with the nodes' outputs as extra graph outputs,
and only two sums per node are kept (signal and error energy), so memory is one photo's
activations in each model whatever the number of photos (``qdq_loss_debug.collect_activations``
keeps every photo's, which reached 16 GB for 40 photos). Then the error each layer adds to
the final depth is measured directly: the QDQ model with that one node fed its float inputs
and float weights (what ``nodes_to_exclude`` would give, without recalibrating) is run on the
photos, and its worst-photo δ<1.25 against fp32 is compared with full INT8's. That is
measured for the ``measure`` layers with the lowest activation SQNR (the others are ranked by
SQNR only): most harmful first.

Fallback (``--target-delta D``): the most harmful layers are kept in fp32 one at a time, in
that order, kept only when they raise the worst search photo without making the search
photos worse on average, until the worst reaches δ<1.25 >= D,
or the next layer would leave less than half of the INT8 speed-up, or no measured layer is
left; the report says which. The speed side is counted work, not a clock: the share of the
model's multiply-adds (at the model's own input size) still run in INT8, so the choice is
the same on every run and every machine for the same model and photos; the final report then times the model
written. The photos are the search split only; the caller reports on the other split.
"""

from __future__ import annotations

import copy
import math
import re
import time

import numpy as np

from runtime.model.metadata import INPUT_NAME
from runtime.model.session import create_session

from . import report
from .photos import PhotoSet

# The nodes that do a network's multiply-adds: what INT8 speeds up and the report ranks.
WORK_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
DEFAULT_MEASURE = 16  # layers whose depth impact is measured (lowest activation SQNR first)
MIN_SPEEDUP_KEPT = 0.5  # the fallback never leaves less than this share of INT8's counted work


_ROLES = (  # (pattern on the exporter's node name, role); the first match names it
    # MiDaS small (efficientnet-lite3 backbone, RefineNet decoder)
    (r"^/layer(\d)_rn/", "decoder: reassemble {0}"),
    (r"^/refinenet(\d)/", "decoder: refinenet {0}"),
    (r"^/output_conv/", "head"),
    (r"^/layer(\d)/.*/conv_dw/", "backbone stage {0} (depthwise)"),
    (r"^/layer(\d)/.*/conv_pwl/", "backbone stage {0} (project)"),
    (r"^/layer(\d)/.*/conv_pw/", "backbone stage {0} (expand)"),
    (r"^/layer(\d)/", "backbone stage {0} (stem)"),
    # Depth Anything V2 (DINOv2 ViT blocks, DPT head)
    (r"^/pretrained/patch_embed/", "backbone: patch embedding"),
    (r"^/pretrained/blocks\.(\d+)/attn/(qkv|proj)/", "backbone block {0}: attention {1}"),
    (r"^/pretrained/blocks\.(\d+)/attn/MatMul_1", "backbone block {0}: attention x values"),
    (r"^/pretrained/blocks\.(\d+)/attn/MatMul", "backbone block {0}: attention scores"),
    (r"^/pretrained/blocks\.(\d+)/mlp/(fc\d)/", "backbone block {0}: MLP {1}"),
    (r"^/depth_head/(projects|resize_layers)\.(\d)/", "head: reassemble {1} ({0})"),
    (r"^/depth_head/(?:scratch/)?layer(\d)_rn/", "head: reassemble {0}"),
    (r"^/depth_head/(?:scratch/)?refinenet(\d)/", "head: fusion {0}"),
    (r"^/depth_head/(?:scratch/)?output_conv", "head: output"),
)


def role(node_name: str) -> str:
    """Where a quantized node sits in its network, from the exporter's node name."""
    for pattern, text in _ROLES:
        if m := re.match(pattern, node_name):
            return text.format(*m.groups())
    return "other"


def _producers(model) -> dict[str, object]:
    return {o: n for n in model.graph.node for o in n.output}


def quantized_nodes(model) -> list:
    """The multiply-add nodes (``WORK_OPS``) that read a dequantized input or weight: the
    ones INT8 runs."""
    prod = _producers(model)
    return [n for n in model.graph.node if n.op_type in WORK_OPS
            and any(getattr(prod.get(i), "op_type", "") == "DequantizeLinear" for i in n.input[:2])]


def _float_weight_name(model, node) -> str:
    """The float name of the node's second input (a conv's or projection's weights; for a
    product of two activations, a name that matches no weight)."""
    prod = _producers(model).get(node.input[1])
    name = prod.input[0] if prod is not None and prod.op_type == "DequantizeLinear" else node.input[1]
    return name.removesuffix("_quantized")


def multiply_adds(float_proto, hw: tuple[int, int]) -> dict[str, int]:
    """Multiply-adds of every ``WORK_OPS`` node at batch 1 and ``hw``, from the graph's own
    shapes: onnx's shape inference, or onnxruntime's symbolic one where that leaves a shape
    unknown (the ViT's token reshapes are computed from the input size)."""
    proto = copy.deepcopy(float_proto)
    for d, value in zip(proto.graph.input[0].type.tensor_type.shape.dim, (1, 3, *hw), strict=True):
        d.ClearField("dim_param")
        d.dim_value = value
    del proto.graph.value_info[:]
    shapes = _shapes(proto)
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    work = {}
    for node in proto.graph.node:
        if node.op_type not in WORK_OPS or not all(shapes.get(i) for i in (node.input[0], node.output[0])):
            continue
        x, y = shapes[node.input[0]], shapes[node.output[0]]
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and w:
            work[node.name] = math.prod(y) * math.prod(w[1:])  # per output value: Cin/groups x kh x kw
        elif node.op_type == "ConvTranspose" and w:
            work[node.name] = math.prod(x) * math.prod(w[1:])  # per input value: Cout/groups x kh x kw
        elif node.op_type in ("MatMul", "Gemm"):
            work[node.name] = math.prod(y) * x[-1]  # per output value: the inner dimension
    return work


def _shapes(proto) -> dict[str, list[int]]:
    """Tensor name -> static shape (an entry only when every dimension is known)."""
    import onnx

    def known(p) -> dict[str, list[int]]:
        out = {}
        for vi in [*p.graph.input, *p.graph.value_info, *p.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                out[vi.name] = [d.dim_value for d in dims]
        return out

    shapes = known(onnx.shape_inference.infer_shapes(proto))
    if all(n.output[0] in shapes for n in proto.graph.node if n.op_type in WORK_OPS):
        return shapes
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # public tool module

    return known(SymbolicShapeInference.infer_shapes(proto, auto_merge=True))


def _tapped(proto, tensors: list[str]) -> bytes:
    """The model with ``tensors`` as extra graph outputs (any shape), serialized."""
    from onnx import TensorProto, helper

    have = {o.name for o in proto.graph.output}
    count = len(proto.graph.output)
    proto.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors if t not in have)
    try:
        return proto.SerializeToString()
    finally:
        del proto.graph.output[count:]  # the caller's model is left as it was


def _qdq_view(qdq_proto, node) -> str:
    """The tensor the QDQ model passes on for a node's output: its DequantizeLinear output when
    the output is quantized, else the node's output itself (it goes on in float, into an Add)."""
    y = node.output[0]
    q = next((n for n in qdq_proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == y), None)
    dq = q and next((n for n in qdq_proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]), None)
    return dq.output[0] if dq is not None else y


def activation_sqnr(float_proto, qdq_proto, photos: PhotoSet, threads: int | None) -> dict[str, float]:
    """node name -> SQNR (dB) of its output in the QDQ model against the fp32 model, over all
    photos, streamed one photo at a time (two running sums per node)."""
    convs = quantized_nodes(qdq_proto)
    float_taps = [c.output[0] for c in convs]
    qdq_taps = [_qdq_view(qdq_proto, c) for c in convs]
    fp32 = create_session(_tapped(float_proto, float_taps), threads=threads)
    qdq = create_session(_tapped(qdq_proto, qdq_taps), threads=threads)
    signal = np.zeros(len(convs))
    noise = np.zeros(len(convs))
    for x in photos.inputs:
        f_out = fp32.run(float_taps, {INPUT_NAME: x})
        q_out = qdq.run(qdq_taps, {INPUT_NAME: x})
        for i, (f, q) in enumerate(zip(f_out, q_out, strict=True)):
            f64 = f.astype(np.float64, copy=False).ravel()
            signal[i] += float(f64 @ f64)
            diff = f64 - q.ravel()
            noise[i] += float(diff @ diff)
        del f_out, q_out
    eps = np.finfo(np.float64).eps
    return {c.name: 10 * math.log10(max(s, eps) / max(n, eps)) for c, s, n in zip(convs, signal, noise, strict=True)}


def weight_sqnr(float_path, qdq_path, qdq_proto) -> dict[str, float]:
    """node name -> SQNR (dB) of its dequantized INT8 weights against the float weights (NaN
    for a product of two activations, which has none)."""
    from onnxruntime.quantization.qdq_loss_debug import create_weight_matching

    weights = create_weight_matching(str(float_path), str(qdq_path))
    out = {}
    for conv in quantized_nodes(qdq_proto):
        w = weights.get(_float_weight_name(qdq_proto, conv), {})
        if "float" not in w:
            out[conv.name] = float("nan")
            continue
        f = np.asarray(w["float"], np.float64).ravel()
        err = f - np.asarray(w["dequantized"], np.float64).ravel()
        eps = np.finfo(np.float64).eps
        out[conv.name] = 10 * math.log10(max(float(f @ f), eps) / max(float(err @ err), eps))
    return out


def keep_float(qdq_proto, float_proto, node_names: list[str]):
    """A copy of the QDQ model in which the named nodes read their float inputs, weights and
    bias (their output stays quantized for the layers after them), as ``nodes_to_exclude``
    would make them, with every other scale left as calibrated."""
    model = copy.deepcopy(qdq_proto)
    prod = _producers(model)
    floats = {t.name: t for t in float_proto.graph.initializer}
    float_nodes = {n.name: n for n in float_proto.graph.node if n.op_type in WORK_OPS}
    have = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in WORK_OPS or node.name not in node_names:
            continue
        for k, float_name in enumerate(float_nodes[node.name].input):
            if float_name in floats:  # a weight or bias: the float initializer
                alias = f"{float_name}__fp32"  # the QDQ graph may already use the float name for a DQ output
                if alias not in have:
                    tensor = copy.deepcopy(floats[float_name])
                    tensor.name = alias
                    model.graph.initializer.append(tensor)
                    have.add(alias)
                node.input[k] = alias
                continue
            dq = prod.get(node.input[k])
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]  # the float activation
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


def evaluate(proto, photos: PhotoSet, refs: list[np.ndarray], threads: int | None) -> dict:
    """``report.summary`` of a model (proto) against the fp32 outputs on ``photos``."""
    session = create_session(proto.SerializeToString(), threads=threads)
    return report.summary(report.scores(session, photos.inputs, refs), photos.names)


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def layer_report(float_path, qdq_path, photos: PhotoSet, threads: int | None = None,
                 measure: int = DEFAULT_MEASURE) -> dict:
    """Every quantized node: name, role, activation and weight SQNR, and (for the ``measure``
    lowest-SQNR ones) the worst-photo δ<1.25 gained by keeping it in fp32; ranked most
    harmful first, with the photos all of it was measured on."""
    import onnx

    t0 = time.perf_counter()
    float_proto, qdq_proto = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    refs = report.outputs(create_session(str(float_path), threads=threads), photos.inputs)
    base = evaluate(qdq_proto, photos, refs, threads)
    act = activation_sqnr(float_proto, qdq_proto, photos, threads)
    wts = weight_sqnr(float_path, qdq_path, qdq_proto)
    ops = {n.name: n.op_type for n in quantized_nodes(qdq_proto)}
    order = sorted(act, key=lambda n: (_or_inf(act[n]), n))
    rows = []
    for i, name in enumerate(order):
        row = {"name": name, "op": ops[name], "role": role(name), "activation_sqnr_db": act[name],
               "weight_sqnr_db": wts[name]}
        if i < measure:
            fixed = evaluate(keep_float(qdq_proto, float_proto, [name]), photos, refs, threads)
            row["delta1_gain_if_float"] = fixed["worst_delta1"] - base["worst_delta1"]
            row["absrel_drop_if_float"] = base["worst_absrel"] - fixed["worst_absrel"]
        rows.append(row)
    rows.sort(key=lambda r: (-r.get("delta1_gain_if_float", -math.inf), -r.get("absrel_drop_if_float", -math.inf),
                             _or_inf(r["activation_sqnr_db"]), r["name"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return {"int8_worst_delta1": base["worst_delta1"], "int8_worst_absrel": base["worst_absrel"],
            "images": len(photos), "photos": list(photos.names), "measured": min(measure, len(rows)),
            "layers": rows, "seconds": time.perf_counter() - t0}


def choose_fallback(float_path, qdq_path, photos: PhotoSet, layers: list[dict], target_delta: float,
                    hw: tuple[int, int], threads: int | None = None, max_steps: int = 12) -> dict:
    """Keep the most harmful measured layers in fp32, in rank order, each only if it raises the
    worst photo without making the others worse on average (``_helps``), until that photo's δ<1.25 reaches ``target_delta``; stop before a layer that
    would leave less than ``MIN_SPEEDUP_KEPT`` of the INT8 multiply-adds at ``hw`` (the
    model's own size). Returns the choice and why."""
    import onnx

    float_proto, qdq_proto = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    work = multiply_adds(float_proto, hw)
    total = sum(work.values())
    refs = report.outputs(create_session(str(float_path), threads=threads), photos.inputs)
    current = evaluate(qdq_proto, photos, refs, threads)
    candidates = [r["name"] for r in layers if r.get("delta1_gain_if_float", 0) > 0][:max_steps]
    chosen: list[str] = []
    steps = []
    reason = None
    for name in candidates:
        if current["worst_delta1"] >= target_delta:
            break
        kept = 1 - sum(work.get(n, 0) for n in chosen + [name]) / total
        if kept < MIN_SPEEDUP_KEPT:
            reason = (f"stopped: keeping {name} in fp32 would leave {kept:.0%} of the INT8 multiply-adds "
                      f"(under {MIN_SPEEDUP_KEPT:.0%})")
            break
        result = evaluate(keep_float(qdq_proto, float_proto, chosen + [name]), photos, refs, threads)
        steps.append({"layer": name, "worst_delta1": result["worst_delta1"], "mean_delta1": result["mean_delta1"],
                      "int8_work_kept": kept, "kept": _helps(result, current)})
        if steps[-1]["kept"]:
            chosen, current = chosen + [name], result
    met = current["worst_delta1"] >= target_delta
    if reason is None:
        reason = _reason(met, candidates, layers)
    return {"target_worst_delta1": target_delta, "layers": chosen, "met": met, "reason": reason, "steps": steps,
            "search_worst_delta1": current["worst_delta1"], "search_photos": list(photos.names),
            "int8_work_kept": 1 - sum(work.get(n, 0) for n in chosen) / total,
            "speed_rule": f"counted work: share of the multiply-adds at {hw[0]}x{hw[1]} left in INT8, at least "
                          f"{MIN_SPEEDUP_KEPT:.0%}"}


def _helps(trial: dict, current: dict) -> bool:
    """A layer is kept in fp32 only when it raises the worst search photo without making the
    search photos worse on average (mean δ down or mean AbsRel up): a layer that trades the
    other photos for the worst one raised the search figure and lowered the held-out worst
    photo (0.9995 -> 0.9917 on the proxy, 40 photos)."""
    return (trial["worst_delta1"] > current["worst_delta1"] and trial["mean_delta1"] >= current["mean_delta1"]
            and trial["mean_absrel"] <= current["mean_absrel"])


def _reason(met: bool, candidates: list[str], layers: list[dict]) -> str:
    """Why the search ended when neither the target nor the speed rule stopped it."""
    if met:
        return "target met"
    if not any("delta1_gain_if_float" in r for r in layers):
        return "nothing to fall back on: no layer's depth impact was measured (--measure-layers 0)"
    if not candidates:
        return "stopped: no measured layer raises the worst photo's δ when kept in fp32 alone"
    return ("stopped: falling back stops paying (no further measured layer raises the worst photo's δ "
            "without making the search photos worse on average)")
