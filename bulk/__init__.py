"""``midas-onnx bulk``: the job engine (``runtime.engine``) over Ray, one worker per node
(optional ``ray`` extra). ``runtime/`` never imports Ray; only this package does."""

from runtime.engine import read_manifest

from .pipeline import BulkError, BulkResult, BulkSettings, run

__all__ = ["BulkError", "BulkResult", "BulkSettings", "read_manifest", "run"]
