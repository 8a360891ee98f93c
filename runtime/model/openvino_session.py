"""onnxruntime's session interface on OpenVINO's CPU plugin, for the files midas-onnx writes.

Only what the project calls on a session: ``run(None, {name: array})``, ``get_inputs()``,
``get_outputs()`` and ``get_modelmeta().custom_metadata_map``, so the heatmapper, the job
engine, the server and the benchmarks run either inference engine unchanged. OpenVINO is an
optional extra (``pip install ".[openvino]"``, torch-free) and is imported only here.

Why these settings:

- ``INFERENCE_PRECISION_HINT=f32``: on CPUs with BF16, OpenVINO runs an "fp32" model in bf16
  unless told otherwise, which moves this project's outputs by up to 0.19 of their range.
  INT8 files keep their integer convolutions; what stays in float stays in f32.
- One compiled model with dynamic H/W: photos of other shapes need no new compilation (a
  compile costs about as much as tens of inferences).
- One infer request per thread: OpenVINO's requests are not thread-safe, while
  ``DepthHeatmapper`` promises that ``predict`` may be called from several threads at once,
  as onnxruntime's ``run`` allows.
- ONNX ``metadata_props`` reach OpenVINO as the model's ``framework`` runtime info, which is
  where the model description is read from.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it: name, shape (None for a dynamic axis), type."""

    name: str
    shape: list
    type: str = "tensor(float)"


@dataclass(frozen=True)
class ModelMeta:
    custom_metadata_map: dict[str, str] = field(default_factory=dict)
    producer_name: str = ""


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ModelError("the openvino engine needs OpenVINO: pip install 'midas-onnx[openvino]'") from None
    return openvino


def available() -> bool:
    """Whether OpenVINO can be imported here (the ``openvino`` extra)."""
    try:
        _openvino()
    except ModelError:
        return False
    return True


def streams_for(threads: int) -> dict[str, int]:
    """``threads`` per call, as onnxruntime's intra-op threads are: one stream per ``threads``
    of the CPUs, so that calls from several workers sharing the session (``heatmap``'s) run at
    once instead of queueing on one stream; a single caller uses one stream."""
    streams = max(1, (os.cpu_count() or 1) // threads)
    return {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": threads * streams}


class OpenVinoSession:
    """A compiled OpenVINO model behind onnxruntime's ``InferenceSession`` methods."""

    engine = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ov = _openvino()
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
            if threads:
                config.update(streams_for(int(threads)))
            self._compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path} cannot run on OpenVINO ({first})") from None
        info = model.get_rt_info()
        framework = info["framework"] if "framework" in info else {}
        self._meta = ModelMeta({key: value.astype(str) for key, value in framework.items()}, "")
        self._inputs = [_arg(port) for port in self._compiled.inputs]
        self._outputs = [_arg(port) for port in self._compiled.outputs]
        self._local = threading.local()

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_modelmeta(self) -> ModelMeta:
        return self._meta

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Like onnxruntime's: every output (or those named), as arrays the caller owns."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer(feeds)
        wanted = output_names or [o.name for o in self._outputs]
        by_name = {o.name: i for i, o in enumerate(self._outputs)}
        # copies: the request reuses its output buffers on the next call from this thread
        return [np.array(result[self._compiled.outputs[by_name[name]]], copy=True) for name in wanted]


def _arg(port) -> NodeArg:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return NodeArg(port.get_any_name(), shape)
