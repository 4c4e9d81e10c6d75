"""The ONNX opsets the exporter writes (torch-free, so that ``offseg-export --help`` stays fast)."""

MIN_OPSET = 18  # GroupNorm/Resize/GridSample as the exporter emits them; LayerNormalization needs 17
# GELU becomes one Gelu op from opset 20 (ONNX Runtime runs OffSeg-T 1.13x faster than with the erf subgraph it
# does not fuse); 20 is also the newest opset TensorRT 10's parser takes
DEFAULT_OPSET = 20
# the newest opset the exported graph converts to and passes ONNX's checker with (onnx 1.23, torch 2.13's
# exporter): at 26 the checker rejects the converted Gelu ("Bad node spec"); 25 runs in ONNX Runtime 1.32
MAX_OPSET = 25
