"""midas-onnx: MiDaS_small monocular depth as fast, torch-free heatmaps on CPUs."""

__version__ = "0.1.0"
