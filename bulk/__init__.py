"""``midas-onnx bulk``: the runtime's pipeline over whole collections on Ray Data (optional
``ray`` extra). ``runtime/`` never imports Ray; only this package does."""

from .pipeline import BulkSettings, Summary, read_manifest, run

__all__ = ["BulkSettings", "Summary", "read_manifest", "run"]
