"""fp32 vs INT8 vs the PyTorch path, side by side in one process run.

    python -m benchmarks.bench                       # or: midas-onnx bench
    python -m benchmarks.bench --quick               # CI-sized, under 2 minutes
    python -m benchmarks.bench --models da           # Depth Anything V2 Small alone (<machine>-da.md)

Variants are data (``Variant``), their runs interleaved so machine drift hits all alike.
Writes ``bench-results/<machine>.md`` (the table), ``.json`` (raw figures) and ``.png``
(a chart) under the current folder, or ``--out DIR``. PyTorch rows appear when the ``export`` extra is installed; OpenVINO rows when
``openvino`` is, with ``INFERENCE_PRECISION_HINT=f32`` (its default on bf16-capable CPUs
runs "fp32" models in bf16, which measured 19% max error).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from quantize.report import LANDSCAPE_PHOTO

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
Runner = Callable[[np.ndarray], np.ndarray]

# Bars from the issue, checked as ratios from this run.
BARS = {
    "onnx_fp32_vs_torch_eager": 2.0,
    "static_int8_vs_onnx_fp32_vnni": 2.5,  # judged on CPUs with AVX-512 VNNI or AVX-VNNI only
    "static_int8_vs_openvino_int8_max": 1.05,
    "dynamic_fp32_vs_fixed_fp32_max": 1.05,
    "cli_vs_inference_min": 0.8,
    "cli_images_per_s_vnni": 40.0,  # 640x480 JPEGs, default INT8 model, 2-core VNNI machine
    "runtime_peak_rss_mb_max": 200.0,
    "cold_start_s_max": 1.5,
    "int8_paths_absrel_diff_max": 0.005,  # the same INT8 file on CPUs with and without VNNI
}
# Bars of the side-by-side table, per family, at the model's own input size, all cores.
FAMILY_BARS = {"da": {"int8_vs_onnx_fp32_vnni": 1.5, "int8_vs_onnx_fp32_no_vnni": 1.35, "onnx_fp32_vs_torch_eager": 1.5}}


@dataclass(frozen=True)
class Variant:
    """One row: how to run it is decided by ``engine``; variants are data, not subclasses."""

    name: str
    engine: str  # "torch-eager", "torch-trace", "onnxruntime", "openvino"
    path: Path | None = None  # ONNX file for onnxruntime/openvino rows
    precision: str = "fp32"
    dynamic: bool = False  # dynamic H/W: also timed at the shape of a 640x480 photo
    model: str = "midas-small"  # the description id (PyTorch rows build this network)


@dataclass(frozen=True)
class Settings:
    runs: int
    batch_runs: int
    photos: int
    threads: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]  # (width, height) of end-to-end photos
    subprocess_checks: bool


FULL = Settings(runs=30, batch_runs=6, photos=100, threads=(1, os.cpu_count() or 1),
                sizes=((640, 480), (1920, 1080)), subprocess_checks=True)
QUICK = Settings(runs=6, batch_runs=2, photos=3, threads=(os.cpu_count() or 1,),
                 sizes=((640, 480),), subprocess_checks=True)


# --- machine -------------------------------------------------------------------------------
# A results file per CPU kind: the same CPU name comes as Zen 3 (AVX2 only) and Zen 4/5 (VNNI).
PATH_SLUG = {"vnni": "vnni", "avx2-u8s8": "avx2", "arm-dot": "armdot", "other": "noint8"}


def machine() -> dict[str, str]:
    from runtime.model.cpu import cpu_name, int8_flags, int8_path

    cpu = cpu_name()
    isa = int8_flags()
    import onnxruntime

    versions = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    for mod in ("cv2", "torch", "openvino"):
        if importlib.util.find_spec(mod):
            versions[mod] = getattr(__import__(mod), "__version__", "?")
    path = int8_path(isa)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{cpu}-{os.cpu_count()}c-{PATH_SLUG[path]}".lower()).strip("-")
    return {"cpu": cpu, "cores": str(os.cpu_count()), "isa": " ".join(isa), "int8_path": path, "slug": slug,
            "date": dt.date.today().isoformat(), **{f"v_{k}": str(v) for k, v in versions.items()}}


# --- runners -------------------------------------------------------------------------------
def make_runner(v: Variant, threads: int, checkpoint: Path | None) -> Runner:
    if v.engine in ("onnxruntime", "openvino"):
        from runtime.model.engine_choice import open_session
        from runtime.model.metadata import INPUT_NAME

        # The runtime's own sessions: OpenVINO's pins f32 precision (on bf16 CPUs it would
        # otherwise run "fp32" models in bf16, 19% max error measured).
        session, _ = open_session(v.path, threads=threads, engine=v.engine)
        return lambda x: session.run(None, {INPUT_NAME: x})[0]
    import torch

    torch.set_num_threads(threads)
    model = _torch_model(checkpoint, v.model)
    if v.engine == "torch-trace":
        import warnings

        from runtime.model.model_description import describe

        size = describe(v.model).input.size
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in 2.x, still the TorchScript path asked for
            model = torch.jit.trace(model, torch.zeros(1, 3, size, size), check_trace=False)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


_TORCH_MODELS: dict[str, object] = {}


def _torch_model(checkpoint: Path | None, model_id: str):
    """The upstream-layout network of ``model_id`` with the checkpoint's weights (random if
    none is given: latency does not depend on weight values; fidelity is then not reported)."""
    if model_id not in _TORCH_MODELS:
        from export.checkpoint import build_model, new_network
        from runtime.model.model_description import describe

        description = describe(model_id)
        _TORCH_MODELS[model_id] = build_model(checkpoint, description)[0] if checkpoint else new_network(description).eval()
    return _TORCH_MODELS[model_id]


def timed(runners: dict[str, Runner], x: np.ndarray, runs: int, **kwargs) -> dict[str, dict]:
    """The project's one latency timer (``quantize.report.timed``: rounds of blocks, a pause
    and a discarded run at every switch, a time budget for slow variants)."""
    from quantize.report import timed as one_timer

    return one_timer(runners, x, runs, **kwargs)


# --- measurements --------------------------------------------------------------------------
def measure_latency(variants, settings, checkpoint, photos_square, photo_second) -> tuple[dict, dict]:
    """Per thread count: batch-1 latency and batch-4 throughput at the model's size square,
    and batch-1 latency of dynamic models at a 640x480 photo's network shape."""
    out: dict = {}
    second: dict = {}
    x1 = photos_square[:1]
    x4 = np.concatenate([photos_square] * 4)[:4]
    for threads in settings.threads:
        runners = {v.name: make_runner(v, threads, checkpoint) for v in variants}
        lat = timed(runners, x1, settings.runs)
        b4 = timed(runners, x4, settings.batch_runs, block=2, min_runs=3)
        for name in runners:
            lat[name]["batch4_images_per_s"] = 4000.0 / b4[name]["median_ms"]
        out[str(threads)] = lat
        dynamic = {v.name: runners[v.name] for v in variants if v.dynamic}
        if dynamic:
            second[str(threads)] = timed(dynamic, photo_second, settings.runs)
    return out, second


def measure_fidelity(variants, checkpoint, inputs) -> dict:
    """AbsRel and delta<1.25 of each variant against ONNX fp32, after scale-and-shift alignment."""
    from quantize.report import compare

    threads = os.cpu_count() or 1
    ref_variant = next((v for v in variants if v.engine == "onnxruntime" and v.precision == "fp32"), None)
    if ref_variant is None:
        return {}
    ref = make_runner(ref_variant, threads, checkpoint)
    refs = [ref(x) for x in inputs]
    out = {}
    for v in variants:
        if v.engine.startswith("torch") and checkpoint is None:
            out[v.name] = None  # other (random) weights: no comparison possible
            continue
        run = make_runner(v, threads, checkpoint)
        out[v.name] = _scores([run(x) for x in inputs], refs)
    return out


def _scores(preds: list[np.ndarray], refs: list[np.ndarray]) -> dict[str, float]:
    from quantize.report import compare

    scores = [compare(p, r) for p, r in zip(preds, refs, strict=True)]
    return {"absrel": float(np.mean([s[0] for s in scores])), "delta1": float(np.mean([s[1] for s in scores])),
            "worst_delta1": float(np.min([s[1] for s in scores]))}


def measure_int8_paths(int8: Variant | None, fp32: Variant | None, inputs: list[np.ndarray]) -> dict | None:
    """Static INT8 fidelity against fp32 on this CPU's integer path and, from a VNNI CPU, on
    the AVX2-only path too (emulated with qemu-user: benchmarks/emulated_cpu.py), so one run
    shows a fidelity regression on either kind. None without both models."""
    from benchmarks.emulated_cpu import EMULATED_CPU, emulator, run_emulated
    from runtime.model.cpu import int8_layout, int8_path
    from runtime.model.session import create_session

    if int8 is None or fp32 is None:
        return None
    meta = dict(create_session(int8.path, threads=1).get_modelmeta().custom_metadata_map)
    layout = meta.get("midas_onnx.int8_layout") or int8_layout(json.loads(meta.get("midas_onnx.quantization", "{}")))
    threads = os.cpu_count() or 1
    refs = [make_runner(fp32, threads, None)(x) for x in inputs]
    here = [make_runner(int8, threads, None)(x) for x in inputs]
    out = {"layout": layout, "this_cpu": {"path": int8_path(), **_scores(here, refs)}}
    if int8_path() == "avx2-u8s8":
        out["avx2_emulated"] = "not needed: this CPU takes the AVX2 path itself"
    elif emulator() is None:
        out["avx2_emulated"] = "not measured: install Debian's qemu-user to emulate an AVX2-only CPU"
    else:
        there, features = run_emulated(int8.path, inputs, threads=threads)
        diff = max(float(np.abs(a - b).max() / max(float(r.max() - r.min()), 1e-12))
                   for a, b, r in zip(here, there, refs))
        out["avx2_emulated"] = {"path": f"avx2-u8s8 (qemu {EMULATED_CPU})", "features": features,
                                "max_diff_of_range_vs_this_cpu": diff, **_scores(there, refs)}
    return out


def measure_end_to_end(onnx_variants, settings, workdir: Path) -> dict:
    """Photos on disk -> heatmap PNGs: DepthHeatmapper in a plain loop, the CLI as users run
    it (its own images/s line, start-up excluded, and the whole command's wall time), and the
    same model's inference-only batch-1 throughput at the photos' network shape with all
    cores in one session: the CLI's target is a share of that."""
    from benchmarks.photos import write
    from runtime import DepthHeatmapper
    from runtime.outputs.render import render

    out: dict = {}
    for w, h in settings.sizes:
        folder = workdir / f"photos_{w}x{h}"
        paths = write(folder, (w, h), settings.photos)
        for v in onnx_variants:
            hm = DepthHeatmapper(v.path, threads=os.cpu_count())
            x = hm.preprocess(paths[0])
            infer = timed({v.name: lambda a, hm=hm: hm._run(a)}, x, settings.runs, budget_s=4.0)[v.name]
            dest = workdir / f"loop_{v.name}_{w}x{h}"
            dest.mkdir()
            t = time.perf_counter()
            for p in paths:
                (dest / (p.name + ".png")).write_bytes(render(hm.predict(p), "heatmap"))
            loop = len(paths) / (time.perf_counter() - t)
            cli_dest = workdir / f"cli_{v.name}_{w}x{h}"
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "midas_onnx", "heatmap", str(folder), "-o", str(cli_dest),
                                   "--model", str(v.path)], check=True, capture_output=True, text=True, cwd=REPO)
            wall = len(paths) / (time.perf_counter() - t)
            steady = float(re.search(r"\(([\d.]+) images/s\)", proc.stdout).group(1))
            out.setdefault(f"{w}x{h}", {})[v.name] = {
                "network_shape": "x".join(map(str, x.shape[2:])),
                "inference_images_per_s": 1000.0 / infer["median_ms"],
                "loop_images_per_s": loop, "cli_images_per_s": steady, "cli_wall_images_per_s": wall,
                "cli_vs_inference": steady * infer["median_ms"] / 1000.0}
    return out


# --- model families side by side ------------------------------------------------------------
FAMILIES = {"midas": "midas-small", "da": "da-v2-small"}  # --models name -> model description id


@dataclass(frozen=True)
class Family:
    """One model's files for the side-by-side table: fp32 and static INT8 ONNX, the PyTorch weights."""

    key: str
    model: str  # description id
    fp32: Path | None
    int8: Path | None
    checkpoint: Path | None


def _models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in models if m not in FAMILIES]
    if bad or not models:
        raise SystemExit(f"--models: choose among {', '.join(FAMILIES)} (comma-separated), got {text!r}")
    return models


def _family(args, key: str) -> Family | None:
    paths = {"midas": (args.fp32, args.int8, args.checkpoint), "da": (args.da_fp32, args.da_int8, args.da_checkpoint)}
    fp32, int8, checkpoint = (Path(p) if p else None for p in paths[key])
    if fp32 is None or not fp32.is_file():
        print(f"note: {key} side-by-side rows skipped: {fp32} not found", file=sys.stderr)
        return None
    return Family(key, FAMILIES[key], fp32, int8 if int8 and int8.is_file() else None, checkpoint)


def family_sizes(description) -> tuple[int, ...]:
    """The model's own input size and two smaller ones a CPU user picks for speed (about 70%
    and half of the side: about half and a quarter of the work), multiples of its step
    (Depth Anything V2 Small: 518, 364, 252)."""
    size, step = description.input.size, description.input.multiple_of
    return tuple(dict.fromkeys((size, step * round(size * 0.7 / step), step * max(1, size // 2 // step))))


def family_variants(family: Family, args) -> list[Variant]:
    """PyTorch eager (when installed), ONNX fp32 and static INT8 on onnxruntime, and OpenVINO on
    the same files (when installed)."""
    from runtime.heatmapper import read_model_info
    from runtime.model.session import create_session

    out = []
    if all(importlib.util.find_spec(m) for m in ("torch", "timm")) and not args.no_torch:
        out.append(Variant(f"{family.key}-pytorch-eager", "torch-eager", model=family.model))
    for path in (family.fp32, family.int8):
        if path is not None:
            info = read_model_info(create_session(path, threads=1), path)
            out.append(Variant(f"{family.key}-onnx-{info.precision}", "onnxruntime", path, info.precision, info.dynamic,
                               family.model))
    if importlib.util.find_spec("openvino") and not args.no_openvino:
        out += [Variant(v.name.replace("-onnx-", "-openvino-"), "openvino", v.path, v.precision, v.dynamic, v.model)
                for v in list(out) if v.engine == "onnxruntime"]
    return out


def measure_families(families: list[Family], settings: Settings, args) -> dict:
    """Each family's variants at each of its sizes (square photos squashed to it, as a fixed
    size would), batch 1, all cores: latency, and fidelity against its ONNX fp32 on the same
    inputs; static INT8 per integer path at the smallest size (the AVX2-only one emulated)."""
    from benchmarks.photos import load
    from runtime.model.metadata import ModelInfo
    from runtime.model.model_description import describe
    from runtime.model.preprocess import network_input

    threads = max(settings.threads)
    photos = [p for p in load().values() if p.ndim == 3][: max(2, min(settings.photos, 4))]
    rows, paths, floors = [], {}, {}
    for family in families:
        description = describe(family.model)
        variants = family_variants(family, args)
        runners = {v.name: make_runner(v, threads, family.checkpoint) for v in variants}
        fp32 = next(v for v in variants if v.engine == "onnxruntime" and v.precision == "fp32")
        int8 = next((v for v in variants if v.engine == "onnxruntime" and v.precision == "int8-static"), None)
        for size in family_sizes(description):
            info = ModelInfo(input_hw=(size, size), description=description)
            xs = [network_input(p, info, "rgb") for p in photos]
            lat = timed(runners, xs[0], settings.runs)
            refs = [runners[fp32.name](x) for x in xs]
            for v in variants:
                same_weights = not v.engine.startswith("torch") or family.checkpoint is not None
                fid = _scores([runners[v.name](x) for x in xs], refs) if same_weights else {}
                rows.append({"model": description.title, "family": family.key, "variant": v.name, "engine": v.engine,
                             "precision": v.precision, "size": size, **lat[v.name], **fid})
        if int8 is not None:
            small = min(family_sizes(description))
            xs = [network_input(p, ModelInfo(input_hw=(small, small), description=description), "rgb") for p in photos[:2]]
            paths[family.key] = {"size": small, **measure_int8_paths(int8, fp32, xs)}
        if importlib.util.find_spec("onnx"):
            floors[family.key] = fp32_floor(fp32.path, description.input.size, threads)
    return {"threads": threads, "rows": rows, "int8_paths": paths, "fp32_floor": floors}


def fp32_floor(path: Path, size: int, threads: int) -> dict:
    """An estimate of the fastest an fp32 file runs on onnxruntime here: its multiply-adds
    (convs and matrix products, attention's included) at this machine's own large-MatMul rate
    at ``threads``, as if every other op were free. An estimate, not a bound: kernels that beat
    the large-MatMul rate (onnxruntime's blocked convs do, on MiDaS) run under it."""
    gflop = model_gflop(path, (size, size))
    rate = matmul_rates(threads)["sgemm_gflops"]
    return {"size": size, "gflop": round(gflop, 2), "sgemm_gflops": round(rate, 1),
            "floor_ms": round(gflop / rate * 1000, 1)}


# --- roofline ------------------------------------------------------------------------------
def _one_node_rate(op: str, dtypes: tuple[int, int, int], threads: int, n: int, runs: int = 10,
                   warmup_s: float = 1.0) -> float:
    """Giga-ops/s of one ``op`` node multiplying n x n by n x n through onnxruntime's own
    kernels (MLAS), best of ``runs`` after ``warmup_s`` of untimed runs: the pool's threads
    must be awake and the clock up, or the 2-thread figure came out under the 1-thread one."""
    import onnx
    from onnx import helper

    from runtime.model.session import create_session

    a_type, b_type, c_type = dtypes
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], op,
                              [helper.make_tensor_value_info("a", a_type, [n, n]),
                               helper.make_tensor_value_info("b", b_type, [n, n])],
                              [helper.make_tensor_value_info("c", c_type, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = create_session(model.SerializeToString(), threads=threads)
    rng = np.random.default_rng(0)
    np_types = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}
    feeds = {name: rng.integers(-100, 100, (n, n)).astype(np_types[t]) if t != onnx.TensorProto.FLOAT else
             rng.standard_normal((n, n)).astype(np.float32) for name, t in (("a", a_type), ("b", b_type))}
    if a_type == onnx.TensorProto.UINT8:
        feeds["a"] = rng.integers(0, 255, (n, n)).astype(np.uint8)
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        session.run(None, feeds)
    best = min(_time_once(lambda: session.run(None, feeds)) for _ in range(runs))
    return 2.0 * n**3 / best / 1e9


@functools.lru_cache(maxsize=None)
def matmul_rates(threads: int) -> dict[str, float]:
    """This machine's fp32 (MatMul) and INT8 (MatMulInteger, u8 x s8, VNNI where the CPU has
    it) multiply rates at ``threads``: the best of 1024^3 and 2048^3, measured once per run
    (the roofline and each family's fp32 floor share them)."""
    from onnx import TensorProto as T

    return {"sgemm_gflops": max(_one_node_rate("MatMul", (T.FLOAT, T.FLOAT, T.FLOAT), threads, n) for n in (1024, 2048)),
            "int8_gops": max(_one_node_rate("MatMulInteger", (T.UINT8, T.INT8, T.INT32), threads, n)
                             for n in (1024, 2048))}


def sgemm_gflops(threads: int, n: int = 1024, runs: int = 10) -> float:
    """fp32 matrix-multiply rate through onnxruntime's MatMul (kept for callers of one size)."""
    from onnx import TensorProto as T

    return _one_node_rate("MatMul", (T.FLOAT, T.FLOAT, T.FLOAT), threads, n, runs)


def _time_once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_gflop(path: Path, hw: tuple[int, int]) -> float:
    """Multiply-adds x 2 of every conv and matrix product at batch 1 and ``hw``, from the
    graph's own shapes."""
    import onnx

    from quantize.layers import multiply_adds

    return 2 * sum(multiply_adds(onnx.load(str(path)), hw).values()) / 1e9


def roofline(variants, latency: dict, hw: tuple[int, int]) -> dict:
    """Each fp32 variant's latency against this machine's MatMul floor at the same threads,
    and static INT8 against the MatMulInteger floor. A floor at more threads is never taken
    below the one at fewer (more threads can always run as fewer)."""
    fp32 = [v for v in variants if v.engine == "onnxruntime" and v.precision == "fp32"]
    if not fp32 or not importlib.util.find_spec("onnx"):
        return {}
    gflop = model_gflop(fp32[0].path, hw)
    out: dict = {"model_gflop_256": gflop, "threads": {}}
    best = {"sgemm_gflops": 0.0, "int8_gops": 0.0}
    for threads in sorted(latency, key=int):
        measured = matmul_rates(int(threads))
        rates = {k: max(v, best[k]) for k, v in measured.items()}
        best = rates
        rows = latency[threads]
        floor_ms, int8_floor_ms = gflop / rates["sgemm_gflops"] * 1000, gflop / rates["int8_gops"] * 1000
        out["threads"][threads] = {
            **rates, "measured": measured, "floor_ms": floor_ms, "int8_floor_ms": int8_floor_ms,
            "share_of_floor": {v.name: floor_ms / rows[v.name]["median_ms"]
                               for v in variants if v.name in rows and v.precision == "fp32"},
            "int8_share_of_floor": {v.name: int8_floor_ms / rows[v.name]["median_ms"]
                                    for v in variants if v.name in rows and v.precision == "int8-static"}}
    return out


def _op_group(node: str, op: str) -> str:
    """Where a node of the optimized graph belongs in MiDaS small, from its name and op type."""
    if op == "Resize":
        return "decoder resize"
    if "Conv" in op:
        if "/conv_dw/" in node:
            return "depthwise conv"
        if "/conv_pw" in node:
            return "pointwise conv (expand, project)"
        if node.startswith("/layer1/layer1.0/"):
            return "stem conv"
        return "decoder and head conv" if re.match(r"^/(layer\d_rn|refinenet|output_conv)", node) else "other conv"
    if op in ("QuantizeLinear", "DequantizeLinear", "Transpose"):
        return "quantize, dequantize, layout"
    return "adds and other"


def op_profile(path: Path, fp32_path: Path, threads: int, hw: tuple[int, int], runs: int = 20) -> dict:
    """Where a model's time goes: onnxruntime's profiler, ms per run by group (pointwise,
    depthwise, stem, decoder convs, decoder resize, quantize/layout) and by op type, beside
    each conv group's GOP. Each node's time is its median over the runs, so the first (cold)
    runs do not count."""
    import onnx

    from quantize.layers import multiply_adds
    from runtime.model.metadata import INPUT_NAME
    from runtime.model.session import create_session

    x = np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="midas-profile-") as tmp:
        session = create_session(path, threads=threads, profile_prefix=str(Path(tmp) / "p"))
        for _ in range(runs):
            session.run(None, {INPUT_NAME: x})
        events = [e for e in json.loads(Path(session.end_profiling()).read_text())
                  if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_node: dict[tuple[str, str], list[float]] = {}
    for e in events:
        node = re.sub(r"(_token_\d+)?_kernel_time$", "", e["name"])
        per_node.setdefault((node, e["args"]["op_name"]), []).append(e["dur"] / 1000)
    groups: dict[str, float] = {}
    ops: dict[str, float] = {}
    for (node, op), durations in per_node.items():
        ms = float(np.median(durations))
        groups[_op_group(node, op)] = groups.get(_op_group(node, op), 0.0) + ms
        ops[op] = ops.get(op, 0.0) + ms
    gops: dict[str, float] = {}
    for name, macs in multiply_adds(onnx.load(str(fp32_path)), hw).items():
        gops[_op_group(name, "Conv")] = gops.get(_op_group(name, "Conv"), 0.0) + 2 * macs / 1e9
    return {"threads": threads, "shape": "x".join(map(str, hw)), "runs": runs,
            "groups_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "op_types_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1])), "groups_gop": gops}


# Peak RSS from VmHWM: unlike ru_maxrss it is reset by exec, so the parent's (torch-sized)
# footprint before the fork does not leak into the child's figure.
COLD_START = """
import sys, time
t0 = float(sys.argv[1])
from runtime import DepthHeatmapper
hm = DepthHeatmapper(sys.argv[2])
hm.heatmap(sys.argv[3])
import json
print(json.dumps({"cold_start_s": time.time() - t0,
                  "peak_rss_mb": next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024,
                  "torch_loaded": "torch" in sys.modules}))
"""


def measure_cold_start(onnx_variants, photo: Path) -> dict:
    """A fresh runtime-only process per variant: process start to first heatmap, peak RSS."""
    out = {}
    for v in onnx_variants:
        runs = []
        for _ in range(2):  # the second run has a warm page cache, as a service restart would
            proc = subprocess.run([sys.executable, "-c", COLD_START, repr(time.time()), str(v.path), str(photo)],
                                  check=True, capture_output=True, text=True, cwd=REPO)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out[v.name] = min(runs, key=lambda r: r["cold_start_s"])
    return out


# --- report --------------------------------------------------------------------------------
def bars(results: dict) -> list[dict]:
    """The issue's targets as ratios from this run. A target that only holds on CPUs with an
    INT8 dot-product instruction (VNNI) is shown, but not judged, elsewhere (met = None)."""
    from runtime.model.cpu import has_int8_dot_product

    vnni = has_int8_dot_product(results["machine"]["isa"].split())
    rows = []

    def add(name: str, value: float, target: float, cmp: str, judged: bool = True) -> None:
        met = (value >= target if cmp == ">=" else value <= target) if judged else None
        rows.append({"bar": name, "value": round(value, 4), "target": f"{cmp} {target}" + ("" if judged else " (VNNI CPUs)"),
                     "met": met})

    rows += _family_bars(results.get("families"), vnni, add)
    if not results.get("latency"):
        return rows
    all_threads = str(max(int(t) for t in results["latency"]))
    lat = {n: r["median_ms"] for n, r in results["latency"][all_threads].items()}
    if "pytorch-eager" in lat and "onnx-fp32" in lat:
        add("ONNX fp32 speed-up over PyTorch eager", lat["pytorch-eager"] / lat["onnx-fp32"], BARS["onnx_fp32_vs_torch_eager"], ">=")
    if "onnx-fp32" in lat and "onnx-int8-static" in lat:
        add("static INT8 speed-up over ONNX fp32", lat["onnx-fp32"] / lat["onnx-int8-static"],
            BARS["static_int8_vs_onnx_fp32_vnni"], ">=", judged=vnni)
    if "openvino-int8-static" in lat and "onnx-int8-static" in lat:
        add("static INT8 latency vs OpenVINO on the same file", lat["onnx-int8-static"] / lat["openvino-int8-static"],
            BARS["static_int8_vs_openvino_int8_max"], "<=")
    if "onnx-fp32" in lat and "onnx-fp32-fixed" in lat:
        add("dynamic-size fp32 latency vs fixed 256x256 fp32", lat["onnx-fp32"] / lat["onnx-fp32-fixed"],
            BARS["dynamic_fp32_vs_fixed_fp32_max"], "<=")
    e2e = results.get("end_to_end", {}).get("640x480", {}).get("onnx-int8-static")
    if e2e:
        add("heatmap CLI vs inference-only throughput (640x480, static INT8)", e2e["cli_vs_inference"],
            BARS["cli_vs_inference_min"], ">=")
        add("heatmap CLI images/s (640x480, static INT8)", e2e["cli_images_per_s"], BARS["cli_images_per_s_vnni"], ">=",
            judged=vnni)
    paths = results.get("int8_paths") or {}
    if isinstance(paths.get("avx2_emulated"), dict):
        add("static INT8 AbsRel, AVX2-only path minus this CPU's (|difference|)",
            abs(paths["avx2_emulated"]["absrel"] - paths["this_cpu"]["absrel"]), BARS["int8_paths_absrel_diff_max"], "<=")
    cold = results.get("cold_start", {}).get("onnx-int8-static")
    if cold:
        add("INT8 runtime process peak RSS (MB)", cold["peak_rss_mb"], BARS["runtime_peak_rss_mb_max"], "<=")
        add("INT8 cold start to first heatmap (s)", cold["cold_start_s"], BARS["cold_start_s_max"], "<=")
    return rows


def _family_bars(families: dict | None, vnni: bool, add) -> list[dict]:
    """Each family's bars at its own input size: static INT8 over ONNX fp32 (the target of
    this CPU's kind: VNNI or not), ONNX fp32 over PyTorch eager. ``add`` appends to the rows."""
    if not families:
        return []
    from runtime.model.model_description import describe

    for key, targets in FAMILY_BARS.items():
        model = FAMILIES[key]
        size = describe(model).input.size
        lat = {r["variant"].removeprefix(f"{key}-"): r["median_ms"] for r in families["rows"]
               if r["family"] == key and r["size"] == size}
        title = describe(model).title
        if "onnx-fp32" in lat and "onnx-int8-static" in lat:
            target = targets["int8_vs_onnx_fp32_vnni" if vnni else "int8_vs_onnx_fp32_no_vnni"]
            add(f"{title}: static INT8 speed-up over ONNX fp32 at {size} ({'VNNI' if vnni else 'no VNNI'} CPU)",
                lat["onnx-fp32"] / lat["onnx-int8-static"], target, ">=")
        if "pytorch-eager" in lat and "onnx-fp32" in lat:
            add(f"{title}: ONNX fp32 speed-up over PyTorch eager at {size}", lat["pytorch-eager"] / lat["onnx-fp32"],
                targets["onnx_fp32_vs_torch_eager"], ">=")
    return []


def _midas_lines(results: dict) -> list[str]:
    lines: list[str] = []
    threads = sorted(results["latency"], key=int)
    head = "| variant | size MB | " + " | ".join(f"{t} thr median ms | {t} thr p95 | {t} thr b4 img/s" for t in threads)
    head += " | AbsRel vs fp32 | δ<1.25 | cold start s | peak RSS MB |"
    lines += [f"## Models at {results['shape']}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for v in results["variants"]:
        n = v["name"]
        cells = [n, f"{v['size_mb']:.1f}" if v["size_mb"] else "-"]
        for t in threads:
            r = results["latency"][t].get(n)
            cells += [f"{r['median_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['batch4_images_per_s']:.1f}"] if r else ["-"] * 3
        f = results["fidelity"].get(n)
        cells += [f"{f['absrel']:.4f}", f"{f['delta1']:.4f}"] if f else ["n/a", "n/a"]
        c = results.get("cold_start", {}).get(n)
        cells += [f"{c['cold_start_s']:.2f}", f"{c['peak_rss_mb']:.0f}"] if c else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if results.get("latency_second_size"):
        lines += ["", f"## Dynamic-size models at {results['second_shape']} (a 640x480 photo after "
                  "upstream's resize), batch 1", "",
                  "| variant | threads | median ms | p95 ms |", "|---|---|---|---|"]
        for t, rows in sorted(results["latency_second_size"].items(), key=lambda kv: int(kv[0])):
            for n, r in rows.items():
                lines.append(f"| {n} | {t} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} |")
    if results.get("int8_paths"):
        lines += _int8_path_lines(results["int8_paths"])
    if results.get("roofline"):
        lines += _roofline_lines(results)
    if results.get("op_profile"):
        lines += _profile_lines(results["op_profile"])
    if results.get("end_to_end"):
        lines += ["", "## End to end: JPEG photos -> heatmap PNGs (images/s)", "",
                  "| photos | variant | network shape | inference only (all cores) | DepthHeatmapper loop | "
                  "`heatmap` CLI | CLI / inference | CLI incl. start-up |", "|---|---|---|---|---|---|---|---|"]
        for size, rows in results["end_to_end"].items():
            for n, r in rows.items():
                lines.append(f"| {size} | {n} | {r['network_shape']} | {r['inference_images_per_s']:.1f} | "
                             f"{r['loop_images_per_s']:.1f} | {r['cli_images_per_s']:.1f} | {r['cli_vs_inference']:.2f} | "
                             f"{r['cli_wall_images_per_s']:.1f} |")
    return lines


def _family_lines(families: dict) -> list[str]:
    lines = ["", f"## Model families side by side at their input sizes (batch 1, {families['threads']} threads; "
             "square photos at each size)", "",
             "| model | variant | input size | median ms | p95 ms | runs | AbsRel vs ONNX fp32 | δ<1.25 | δ<1.25 worst |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in families["rows"]:
        fid = [f"{r['absrel']:.4f}", f"{r['delta1']:.4f}", f"{r['worst_delta1']:.4f}"] if "absrel" in r else ["n/a"] * 3
        lines.append(f"| {r['model']} | {r['variant']} | {r['size']} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['runs']} | " + " | ".join(fid) + " |")
    for key, p in families.get("int8_paths", {}).items():
        lines += _int8_path_lines(p, f"{key} at {p['size']}x{p['size']}")
    from benchmarks.report import fp32_floor_lines

    lines += fp32_floor_lines(families)
    return lines


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# midas-onnx benchmark: {m['cpu']}, {m['cores']} cores, {m['date']}", "",
             f"CPU flags that decide INT8 speed: {m['isa'] or 'none of AVX2, AVX-512, VNNI, ARM dot-product'}",
             "Versions: " + ", ".join(f"{k[2:]} {v}" for k, v in m.items() if k.startswith("v_")),
             f"Settings: {results['settings']}", ""]
    if results.get("latency"):
        lines += _midas_lines(results)
    if results.get("families"):
        lines += _family_lines(results["families"])
    lines += ["", "## Bars (ratios from this run, all cores)", "", "| bar | value | target | met |", "|---|---|---|---|"]
    for b in results["bars"]:
        met = "not judged here" if b["met"] is None else ("yes" if b["met"] else "**no**")
        lines.append(f"| {b['bar']} | {b['value']} | {b['target']} | {met} |")
    if results.get("fidelity") and all(v is None for k, v in results["fidelity"].items() if k.startswith("pytorch")):
        lines += ["", "PyTorch rows ran random weights (no --checkpoint): latency only."]
    if results.get("weights_note"):
        lines += ["", results["weights_note"]]
    return "\n".join(lines) + "\n"


def _int8_path_lines(p: dict, what: str = "") -> list[str]:
    lines = ["", f"## Static INT8 fidelity against fp32 per integer path{' (' + what + ')' if what else ''} "
             f"(file layout {p['layout']})", "",
             "| integer path | AbsRel mean | δ<1.25 mean | δ<1.25 worst | max difference from this CPU |",
             "|---|---|---|---|---|"]
    here = p["this_cpu"]
    lines.append(f"| this CPU: {here['path']} | {here['absrel']:.4f} | {here['delta1']:.4f} | {here['worst_delta1']:.4f} | - |")
    other = p["avx2_emulated"]
    if isinstance(other, dict):
        lines.append(f"| {other['path']} | {other['absrel']:.4f} | {other['delta1']:.4f} | {other['worst_delta1']:.4f} | "
                     f"{other['max_diff_of_range_vs_this_cpu']:.2e} of range |")
    else:
        lines += ["", f"AVX2-only path: {other}."]
    return lines


def _roofline_lines(results: dict) -> list[str]:
    rf = results["roofline"]
    lines = ["", f"## Roofline: fp32 against MatMul, static INT8 against MatMulInteger (model: "
             f"{rf['model_gflop_256']:.2f} GFLOP at 256x256)", "",
             "onnxruntime's own kernels, one node of 1024^3 and 2048^3 (the better), best of 10 after 1 s of warm-up; "
             "a floor at more threads is never below the one at fewer.", "",
             "| threads | floor kernel | rate (G/s) | floor ms | variant | median ms | share of floor |",
             "|---|---|---|---|---|---|---|"]
    for t, r in rf["threads"].items():
        for kernel, rate, floor, shares in (("MatMul fp32", r["sgemm_gflops"], r["floor_ms"], r["share_of_floor"]),
                                            ("MatMulInteger u8s8", r.get("int8_gops"), r.get("int8_floor_ms"),
                                             r.get("int8_share_of_floor", {}))):
            for n, share in shares.items():
                lines.append(f"| {t} | {kernel} | {rate:.0f} | {floor:.1f} | {n} | "
                             f"{results['latency'][t][n]['median_ms']:.1f} | {share:.2f} |")
    return lines


def _profile_lines(p: dict) -> list[str]:
    total = sum(p["groups_ms"].values())
    lines = ["", f"## Where static INT8 time goes (onnxruntime profiler, {p['threads']} threads, {p['shape']}, "
             f"median per node over {p['runs']} runs; sum of nodes {total:.1f} ms)", "",
             "| group | ms | share | conv GOP |", "|---|---|---|---|"]
    for group, ms in p["groups_ms"].items():
        gop = p["groups_gop"].get(group)
        lines.append(f"| {group} | {ms:.2f} | {ms / total:.0%} | {'-' if gop is None else f'{gop:.2f}'} |")
    lines += ["", "| op type | ms |", "|---|---|"] + [f"| {op} | {ms:.2f} |" for op, ms in p["op_types_ms"].items()]
    return lines


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if results.get("latency"):
        t = str(max(int(k) for k in results["latency"]))
        names = [v["name"] for v in results["variants"] if v["name"] in results["latency"][t]]
        med = [results["latency"][t][n]["median_ms"] for n in names]
        where = f"at {results['shape']}"
        fid_of = {n: results["fidelity"].get(n) for n in names}
    else:  # the side-by-side rows at each family's own size
        fam = results["families"]
        t = str(fam["threads"])
        top = {r["family"]: max(x["size"] for x in fam["rows"] if x["family"] == r["family"]) for r in fam["rows"]}
        rows = [r for r in fam["rows"] if r["size"] == top[r["family"]]]
        names = [f"{r['variant']} {r['size']}" for r in rows]
        med = [r["median_ms"] for r in rows]
        where = "at each model's input size"
        fid_of = {f"{r['variant']} {r['size']}": r if "delta1" in r else None for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    bars_ = axes[0].barh(names, med, color=["#c0504d" if "pytorch" in n else "#4f81bd" for n in names])
    axes[0].bar_label(bars_, fmt="%.0f ms", padding=3)
    axes[0].set_xlabel(f"median latency {where}, batch 1, {t} threads (lower is better)")
    axes[0].invert_yaxis()
    fid = [(n, fid_of.get(n)) for n in names]
    fid = [(n, f["delta1"]) for n, f in fid if f]
    if fid:
        b2 = axes[1].barh([n for n, _ in fid], [d for _, d in fid], color="#9bbb59")
        axes[1].bar_label(b2, fmt="%.3f", padding=3)
        axes[1].set_xlim(0, 1.1)
        axes[1].invert_yaxis()
    axes[1].set_xlabel("δ<1.25 vs ONNX fp32, scale/shift aligned (higher is better)")
    m = results["machine"]
    fig.suptitle(f"midas-onnx: {m['cpu']}, {m['cores']} cores, {m['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------
def discover(args) -> list[Variant]:
    from runtime.heatmapper import read_model_info
    from runtime.model.session import create_session

    variants: list[Variant] = []
    have_torch = all(importlib.util.find_spec(m) for m in ("torch", "timm"))
    if have_torch and not args.no_torch:
        variants += [Variant("pytorch-eager", "torch-eager"), Variant("pytorch-trace", "torch-trace")]
    onnx_files = [("onnx-fp32", args.fp32), ("onnx-fp32-fixed", args.fixed),
                  ("onnx-int8-dynamic", args.int8_dynamic), ("onnx-int8-static", args.int8)]
    for name, path in onnx_files:
        if path and Path(path).is_file():
            info = read_model_info(create_session(path, threads=1), Path(path))
            variants.append(Variant(name, "onnxruntime", Path(path), info.precision, info.dynamic))
        else:
            print(f"note: {name} skipped: {path} not found", file=sys.stderr)
    if importlib.util.find_spec("openvino") and not args.no_openvino:  # reference rows on the same files
        variants += [Variant("openvino-" + v.name.removeprefix("onnx-"), "openvino", v.path, v.precision, v.dynamic)
                     for v in list(variants) if v.engine == "onnxruntime" and v.precision != "int8-dynamic"]
    return variants


def run(args) -> dict:
    """The selected parts (``--models``): MiDaS small's full tables, and the families side by
    side at their input sizes (Depth Anything V2 Small beside MiDaS small)."""
    settings = QUICK if args.quick else FULL
    models = _models(args.models)
    t0 = time.perf_counter()
    results: dict = {"machine": machine(), "settings": asdict(settings), "quick": args.quick, "models": models,
                     "command": "python -m benchmarks.bench " + " ".join(args.argv)}
    if "midas" in models:
        run_midas(args, settings, results)
    families = [f for f in (_family(args, key) for key in models) if f is not None]
    if families:
        print(f"model families at their input sizes ({', '.join(f.key for f in families)}) ...", file=sys.stderr)
        results["families"] = measure_families(families, settings, args)
    if not results.get("latency") and not results.get("families"):
        raise SystemExit(f"no ONNX model found for {', '.join(models)}; run `midas-onnx export` first")
    results["bars"] = bars(results)
    results["elapsed_s"] = time.perf_counter() - t0
    return results


def run_midas(args, settings: Settings, results: dict) -> None:
    """MiDaS small's variants: latency at its size and at a 640x480 photo's shape, roofline,
    profile, fidelity, INT8 per integer path, end to end, cold start."""
    import cv2

    from benchmarks.photos import load
    from runtime.model.metadata import ModelInfo
    from runtime.model.preprocess import network_input

    variants = discover(args)
    if not any(v.engine == "onnxruntime" for v in variants):
        print(f"note: MiDaS small skipped: no ONNX model found ({args.fp32})", file=sys.stderr)
        return
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    description = _description(next(v.path for v in variants if v.engine == "onnxruntime"))
    size = description.input.size
    info = ModelInfo(input_hw=(size, size), description=description)
    photos = [p for p in load().values() if p.ndim == 3]
    inputs = [network_input(p, info, "rgb") for p in photos]
    x_square = np.concatenate(inputs[:4])
    second = cv2.resize(photos[0], LANDSCAPE_PHOTO[::-1], interpolation=cv2.INTER_AREA)
    x_second = network_input(second, ModelInfo(input_hw=None, description=description), "rgb")
    results["shape"], results["second_shape"] = f"{size}x{size}", "x".join(map(str, x_second.shape[2:]))
    results["variants"] = [{"name": v.name, "engine": v.engine, "precision": v.precision,
                            "path": str(v.path) if v.path else None,
                            "size_mb": v.path.stat().st_size / 1e6 if v.path else None} for v in variants]
    print(f"latency ({len(variants)} variants, threads {settings.threads}) ...", file=sys.stderr)
    results["latency"], results["latency_second_size"] = measure_latency(variants, settings, checkpoint, x_square,
                                                                         x_second)
    print("roofline ...", file=sys.stderr)
    results["roofline"] = roofline(variants, results["latency"], (size, size))
    int8 = next((v for v in variants if v.engine == "onnxruntime" and v.precision == "int8-static"), None)
    fp32 = next((v for v in variants if v.engine == "onnxruntime" and v.precision == "fp32"), None)
    if int8 and fp32 and importlib.util.find_spec("onnx"):
        print("profile ...", file=sys.stderr)
        results["op_profile"] = op_profile(int8.path, fp32.path, max(settings.threads), (size, size))
    print("fidelity ...", file=sys.stderr)
    results["fidelity"] = measure_fidelity(variants, checkpoint, inputs[: max(2, settings.photos)])
    print("INT8 fidelity per integer path ...", file=sys.stderr)
    results["int8_paths"] = measure_int8_paths(int8, fp32, inputs[: max(2, settings.photos)])
    ort_variants = [v for v in variants if v.engine == "onnxruntime"]
    with tempfile.TemporaryDirectory(prefix="midas-bench-") as tmp:
        print("end to end ...", file=sys.stderr)
        results["end_to_end"] = measure_end_to_end(ort_variants, settings, Path(tmp))
        if settings.subprocess_checks:
            print("cold start and memory ...", file=sys.stderr)
            photo = next(Path(tmp).glob("photos_*/*.jpg"))
            results["cold_start"] = measure_cold_start(ort_variants, photo)
    from runtime.model.session import create_session

    meta = dict(create_session(ort_variants[0].path, threads=1).get_modelmeta().custom_metadata_map)
    if checkpoint is None:
        results["weights_note"] = (f"Weights: ONNX models from checkpoint sha256 "
                                   f"{meta.get('midas_onnx.checkpoint_sha256', '?')[:12]}; fidelity of INT8 "
                                   "is only meaningful for the official weights.")


def _description(path: Path):
    from runtime.heatmapper import read_model_info
    from runtime.model.session import create_session

    return read_model_info(create_session(path, threads=1), Path(path)).description


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", default=str(MODELS / "midas_small.onnx"), help="fp32 model (`export`: dynamic size)")
    parser.add_argument("--int8", default=str(MODELS / "midas_small.int8.onnx"), help="static INT8 (`quantize --int8`)")
    parser.add_argument("--int8-dynamic", default=str(MODELS / "midas_small.int8-dynamic.onnx"),
                        help="dynamic INT8 (`quantize --int8 --dynamic`)")
    parser.add_argument("--fixed", default=str(MODELS / "midas_small_256.onnx"),
                        help="fixed 256x256 fp32 (`export --size 256x256 -o models/midas_small_256.onnx`)")
    parser.add_argument("--checkpoint", help="weights for the PyTorch rows (default: found in ../shared/weights)")
    parser.add_argument("--models", default="midas,da",
                        help="which parts to run, comma-separated: midas (MiDaS small's full tables and its rows "
                             "side by side), da (Depth Anything V2 Small side by side at 518, 364, 252)")
    parser.add_argument("--da-fp32", default=str(MODELS / "da_v2_small.onnx"),
                        help="Depth Anything V2 Small fp32 (`export --model da-v2-small`)")
    parser.add_argument("--da-int8", default=str(MODELS / "da_v2_small.int8.onnx"),
                        help="its static INT8 (`quantize --int8 models/da_v2_small.onnx`)")
    parser.add_argument("--da-checkpoint", help="the weights the DA files were exported from, for the PyTorch row's "
                                                "fidelity (without: random weights, latency only)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (< 2 minutes)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO rows")
    parser.add_argument("--out", default="bench-results",
                        help="folder for <machine>.md/.json/.png (default: ./bench-results; the figures the "
                             "README quotes are kept in benchmarks/results/)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.checkpoint is None and importlib.util.find_spec("torch"):
        from export.checkpoint import find_real_weights

        found = find_real_weights()
        args.checkpoint = str(found) if found else None
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    part = "" if "midas" in results["models"] else "-" + "-".join(results["models"])  # e.g. a DA-only run: its own file
    stem = results["machine"]["slug"] + part + ("-quick" if args.quick else "")
    text = markdown(results)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    chart(results, out / f"{stem}.png")
    print(text)
    print(f"wrote {out / stem}.md/.json/.png in {results['elapsed_s']:.0f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
