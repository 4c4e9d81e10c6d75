"""INT8 calibration: calibration data, explicit Q/DQ quantization, per-layer precision decisions."""
