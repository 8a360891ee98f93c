"""What a model is and how it runs: each model's description (carried in the ONNX
metadata), the pre-processing it sets, and the inference sessions (onnxruntime or
OpenVINO, chosen per file and CPU).
"""
