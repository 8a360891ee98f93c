"""The one place that opens inference sessions (as fastembed's ``onnx_model.py``): onnxruntime's,
or OpenVINO's behind the same interface (``runtime.model.openvino_session``).

Exporter checks, quantizer reports, benchmarks, the server and bulk workers all come here,
so threads, providers and memory settings are decided once; ``runtime.model.engine_choice`` picks
the engine when asked for ``auto``.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import ModelError

PROVIDER = "CPUExecutionProvider"


def missing_model_message(path: Path) -> str:
    """Says which command makes the file: INT8 names come from ``quantize``, others from ``export``."""
    if "int8" in path.name:
        how = "Make it with `midas-onnx quantize --int8" + (" --dynamic`" if "int8-dynamic" in path.name else "`")
    else:
        how = "Export one with `midas-onnx export`"
    return f"model file not found: {path}. {how}."


def create_session(
    model_path: str | Path | bytes,
    threads: int | None = None,
    memory_arena: bool = False,
    profile_prefix: str | None = None,
    engine: str = "onnxruntime",
) -> ort.InferenceSession:
    """A CPU session for ``model_path`` (a file, or a serialized model held in memory: the
    quantizer's diagnostics run graphs they build and never need on disk).

    threads: intra-op threads. ``None`` leaves it to onnxruntime, which uses one per
        *physical* core: hyper-threads only slow a compute-bound CNN down.
    memory_arena: onnxruntime's CPU arena keeps freed buffers for reuse. With dynamic shapes
        it grows with every new input size; for this model it measured no faster on a fixed
        shape, so it is off unless asked for.
    profile_prefix: turns on onnxruntime's profiler, which writes ``<prefix>_<date>.json``
        (time per node) when ``end_profiling()`` is called; the benchmark's op-type table.
    engine: "onnxruntime", or "openvino" (an ``OpenVinoSession``: the same methods, a file
        only; the arena and profiler settings are onnxruntime's).
    """
    in_memory = isinstance(model_path, bytes)
    path = Path("<in-memory model>") if in_memory else Path(model_path)
    if not in_memory and not path.is_file():
        raise ModelError(missing_model_message(path))
    if PROVIDER not in ort.get_available_providers():
        raise ModelError(f"this onnxruntime build has no {PROVIDER}: {ort.get_available_providers()}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if engine == "openvino" and not in_memory:
        from .openvino_session import OpenVinoSession

        return OpenVinoSession(path, threads)  # type: ignore[return-value]
    if engine != "onnxruntime":
        raise ModelError(f"engine {engine!r} cannot open {path}: onnxruntime and openvino (files) are the engines")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of convs: no branches to overlap
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or 0
    options.enable_cpu_mem_arena = memory_arena
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(model_path if in_memory else str(path), sess_options=options, providers=[PROVIDER])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a usable ONNX model ({detail})") from None
