"""``midas-onnx serve``: depth heatmaps over HTTP (optional ``serve`` extra: FastAPI, uvicorn)."""

from .app import app_from_env, create_app
from .settings import ServeSettings

__all__ = ["ServeSettings", "app_from_env", "create_app"]
