"""``midas-onnx serve``: depth heatmaps over HTTP (optional ``serve`` extra: FastAPI, uvicorn).

``create_app`` and ``app_from_env`` (serve.app) are imported when first used: importing
``serve.settings`` must not import OpenCV, whose decoder limit is set from the settings
before its first import (``serve.settings.apply_opencv_limit``).
"""

from __future__ import annotations

from .settings import ServeSettings

__all__ = ["ServeSettings", "app_from_env", "create_app"]


def __getattr__(name: str):
    if name in ("create_app", "app_from_env"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
