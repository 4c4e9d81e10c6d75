"""Precision decisions and the ONNX files they act on: checked ONNX I/O and metadata, graph scopes and local
functions, FP32 pins and FP16 conversion, INT8 calibration data and explicit Q/DQ quantization, FP16 safety, the
TensorRT parser's op table, mIoU parity. Used by ``export``; imports only ``offseg`` and ``runtime``."""
