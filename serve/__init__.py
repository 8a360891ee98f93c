"""``midas-onnx serve``: depth heatmaps over HTTP (optional ``serve`` extra: FastAPI, uvicorn)."""

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
