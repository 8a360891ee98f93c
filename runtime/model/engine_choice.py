"""Which inference engine runs a model file here: onnxruntime, OpenVINO, or ``auto``.

(Inference engines, that is; the job engine behind ``heatmap`` and ``bulk`` is ``runtime.engine``.)

``auto`` measures instead of guessing: which engine is faster depends on the CPU (VNNI or
not, AMX), the file (fp32 or INT8, which model) and the thread count, and no rule of thumb
held on the CPUs this project runs on. Both engines run the file at its typical network
shape (a 4:3 landscape photo's, under the file's own resize rule), alternating: one
discarded run each, then ``ROUNDS`` timed runs each. OpenVINO is chosen only when its median
is at least ``MARGIN`` faster, so noise never makes ``auto`` slower than onnxruntime alone.

Cost, bounded: one extra session (an OpenVINO compile) and ``2 x (1 + ROUNDS)`` inferences,
once per file, CPU, thread count and engine versions; the choice is kept in
``$XDG_CACHE_HOME/midas-onnx/engines.json`` (default ``~/.cache``), so later loads read it.
Without OpenVINO installed, ``auto`` is onnxruntime at no cost.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import openvino_session
from .cpu import cpu_name, int8_flags
from ..errors import ModelError
from ..files import write_atomic
from .metadata import INPUT_NAME, ModelInfo
from .preprocess import network_size
from .session import create_session

log = logging.getLogger(__name__)
ENGINES = ("onnxruntime", "openvino", "auto")
ROUNDS = 5
MARGIN = 0.05
CACHE_ENTRIES = 256
TYPICAL_PHOTO = (480, 640)  # (height, width): a 4:3 landscape photo, what most cameras send


@dataclass(frozen=True)
class Choice:
    """The engine a session runs on, and why: asked for, or what ``auto`` measured (ms)."""

    engine: str
    reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "reason": self.reason, "timings_ms": dict(self.timings_ms)}


def typical_shape(session) -> tuple[int, int]:
    """The network shape of a typical photo for the file behind ``session``."""
    info = ModelInfo.from_props(dict(session.get_modelmeta().custom_metadata_map))
    return network_size(*TYPICAL_PHOTO, info)


def open_session(path: str | Path, threads: int | None = None, engine: str = "onnxruntime",
                 memory_arena: bool = False,
                 shape: Callable[[object], tuple[int, int]] = typical_shape) -> tuple[object, Choice]:
    """A session for ``path`` on ``engine`` ("onnxruntime", "openvino" or "auto") and the
    choice made; ``shape`` gives the network shape ``auto`` measures at, from a session."""
    if engine not in ENGINES:
        raise ModelError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return create_session(path, threads, memory_arena, engine=engine), Choice(engine, "asked for")
    if not openvino_session.available():
        return create_session(path, threads, memory_arena), Choice("onnxruntime", "auto: OpenVINO is not installed")
    key = _cache_key(Path(path), threads)
    cached = _read_cache().get(key)
    if cached and cached.get("engine") in ENGINES[:2]:
        choice = Choice(cached["engine"], "auto: measured before on this CPU", cached.get("timings_ms", {}))
        return create_session(path, threads, memory_arena, engine=choice.engine), choice
    sessions = {"onnxruntime": create_session(path, threads, memory_arena)}
    try:
        sessions["openvino"] = create_session(path, threads, engine="openvino")
    except ModelError as exc:
        return sessions["onnxruntime"], Choice("onnxruntime", f"auto: {exc}")
    timings = measure(sessions, shape(sessions["onnxruntime"]))
    fast = pick(timings)
    choice = Choice(fast, "auto: measured at load", timings)
    _write_cache(key, choice)
    log.info("inference engine for %s: %s (%s)", path, fast,
             ", ".join(f"{name} {ms:.1f} ms" for name, ms in timings.items()))
    return sessions[fast], choice


def pick(timings_ms: dict[str, float]) -> str:
    """OpenVINO when its median is at least ``MARGIN`` under onnxruntime's, else onnxruntime."""
    return "openvino" if timings_ms["openvino"] <= (1 - MARGIN) * timings_ms["onnxruntime"] else "onnxruntime"


def measure(sessions: dict[str, object], hw: tuple[int, int], rounds: int = ROUNDS) -> dict[str, float]:
    """Median ms of each session on one ``hw`` input, alternating engines after a discarded run
    each (both run the same pseudo-photo; what it shows does not change the time)."""
    x = np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name, session in sessions.items():
        session.run(None, {INPUT_NAME: x})
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {INPUT_NAME: x})
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "midas-onnx" / "engines.json"


def _cache_key(path: Path, threads: int | None) -> str:
    """The file (by path, size and modification time: no hashing of tens of MB at every load),
    this CPU, the thread count and both engines' versions."""
    import onnxruntime
    import openvino

    stat = path.stat()
    return "|".join([str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns), cpu_name(), " ".join(int8_flags()),
                     str(threads or 0), onnxruntime.__version__, openvino.__version__])


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, choice: Choice) -> None:
    """Best effort: a cache that cannot be written (read-only home, a container) only means the
    next load measures again."""
    data = _read_cache()
    data.pop(key, None)
    data[key] = choice.to_dict()
    for old in list(data)[:-CACHE_ENTRIES]:  # oldest first: files replaced or moved long ago
        del data[old]
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_path(), (json.dumps(data, indent=1) + "\n").encode())
    except OSError as exc:
        log.debug("engine choice not cached (%s)", exc)
