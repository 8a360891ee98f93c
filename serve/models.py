"""The models one server holds (``--model``, repeatable): each its own session
(``DepthHeatmapper``) and its own inference workers (``Batcher``), built with the same
settings (workers, threads, queue size, engine, input size), while the work budget, the
upload slots and the request flow stay one for all (serve.flow): a second model adds
sessions and queues, never a second set of limits. A request picks one by name with
``model=`` (default: the first); an unknown name is a 422 naming the choices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .batcher import Batcher
from .errors import ApiError
from .settings import ServeSettings

log = logging.getLogger("midas_onnx.serve")


@dataclass(eq=False)
class ServedModel:
    """One model: its name (what ``model=`` asks for), file, session and workers."""

    name: str
    path: Path
    hm: object | None = None  # a DepthHeatmapper once loaded (tests give a stub with the same calls)
    batcher: Batcher | None = None
    load_error: str | None = None

    def load(self, settings: ServeSettings) -> None:
        """Open the model and run it once; only then is it served. Any failure is kept in
        ``load_error`` (first line, for /readyz) and logged once."""
        from runtime import DepthHeatmapper

        s = settings
        try:
            hm = DepthHeatmapper(self.path, threads=s.inference_threads, colormap=s.colormap,
                                 max_pixels=s.max_pixels, input_size=s.input_size, engine=s.engine)
            hm.predict(np.zeros((64, 64, 3), np.uint8)).heatmap  # warm-up: first run allocates
            self.hm = hm
            log.info("model %s loaded: %s", self.name, hm)
        except Exception as exc:  # noqa: BLE001 - every failure must reach /readyz
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.load_error = detail[:500]
            log.error("model failed to load (%s): %s", self.name, self.load_error)

    def start(self, settings: ServeSettings, observe: Callable[[str, float], None]) -> None:
        s = settings
        batcher = Batcher(self.hm.predict_batch, s.max_batch, s.max_wait_ms / 1000, s.queue_size,  # type: ignore[union-attr]
                          workers=s.inference_workers, observe=observe)
        batcher.start()
        self.batcher = batcher

    def ready(self) -> bool:
        return self.hm is not None and self.batcher is not None and self.batcher.alive()

    def describe(self) -> dict:
        """What /readyz and /metrics say of it: id, file, output kind and unit, engine chosen,
        precision, input size (a dynamic model's: the size its resize rule aims at)."""
        info = self.hm.info  # type: ignore[union-attr]
        desc = getattr(info, "description", None)
        output = getattr(desc, "output", None)
        choice = getattr(self.hm, "engine_choice", None)
        return {"name": self.name, "file": self.path.name, "id": getattr(desc, "id", ""),
                "output": getattr(output, "kind", ""), "unit": getattr(output, "unit", "") or None,
                "engine": getattr(choice, "engine", ""), "engine_reason": getattr(choice, "reason", ""),
                "precision": info.precision, "input_size": info.input_size_text,
                "resize_to": getattr(getattr(desc, "input", None), "size", None)}


class Models:
    """The served models by name, in the order given; the first is the default."""

    def __init__(self, settings: ServeSettings) -> None:
        self.by_name = {name: ServedModel(name, path) for name, path in settings.models.items()}
        self.default = next(iter(self.by_name.values()))

    def __iter__(self):
        return iter(self.by_name.values())

    def pick(self, name: str | None) -> ServedModel:
        """The model ``model=`` names (None: the default); 422 naming the choices otherwise."""
        if name is None or name == "":
            return self.default
        model = self.by_name.get(name)
        if model is None:
            choices = ", ".join(self.by_name)
            raise ApiError(422, "bad_model", f"no model named {name[:64]!r}; this server has: {choices}")
        return model
