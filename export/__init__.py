"""ONNX and TensorRT export of OffSeg models (torch, onnx; tensorrt optional)."""
