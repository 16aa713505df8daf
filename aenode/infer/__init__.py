"""Inference: model packages (manifest + ONNX), preprocessing and the analysis step."""
