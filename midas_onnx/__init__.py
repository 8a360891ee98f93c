"""midas-onnx: monocular depth (MiDaS small, Depth Anything V2 Small) as fast, torch-free heatmaps on CPUs."""

__version__ = "0.1.0"
