"""A tiny ONNX graph shaped like an OffSeg export (same metadata, NCHW or NHWC input, logits at 1/4 size, node names
under the pinned scopes), including the INT64 shape arithmetic a ``--dynamic`` export has under FreqFusion: enough for
TensorRT's parser and the fakes without exporting a real model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NUM_CLASSES = 5


def write_tiny_onnx(path: Path, dynamic: bool = True, size: tuple[int, int] = (64, 64),
                    weight: np.ndarray | None = None, input_layout: str = "nchw") -> Path:
    """Write the graph: Conv (stride 4) -> OffsetLearning Softmax -> FreqFusion Div by a value computed in INT64.

    ``weight`` (K, 3, 4, 4) sets the class count and makes labels follow the image (default: K=5, all equal).
    ``input_layout`` nhwc: the input is (N, H, W, 3) and a Transpose to NCHW comes first, as in an nhwc export."""
    h, w = ("h", "w") if dynamic else size
    batch = "batch" if dynamic else 1
    out_h, out_w = ("h/4", "w/4") if dynamic else (size[0] // 4, size[1] // 4)
    weight = np.full((NUM_CLASSES, 3, 4, 4), 1 / 48, np.float32) if weight is None else weight.astype(np.float32)
    num_classes = len(weight)
    weight = numpy_helper.from_array(weight, "weight")
    nhwc = input_layout == "nhwc"
    transpose = [helper.make_node("Transpose", ["images"], ["planar"], "node_transpose", perm=[0, 3, 1, 2])]
    nodes = [*(transpose if nhwc else []),
        helper.make_node("Conv", ["planar" if nhwc else "images", "weight"], ["features"], "node_conv_1",
                         strides=[4, 4]),
        helper.make_node("Softmax", ["features"], ["attention"], "OffsetLearning/node_softmax_1", axis=1),
        helper.make_node("Shape", ["features"], ["shape"], "FreqFusion0/node_shape_1"),
        helper.make_node("Gather", ["shape", "one"], ["channels"], "FreqFusion0/node_gather_1", axis=0),
        helper.make_node("Div", ["channels", "one"], ["channels_per_group"], "FreqFusion0/node_div_int"),
        helper.make_node("Cast", ["channels_per_group"], ["divisor"], "FreqFusion0/node_cast_1", to=TensorProto.FLOAT),
        helper.make_node("Div", ["attention", "divisor"], ["logits"], "FreqFusion0/node_div_float"),
    ]
    graph = helper.make_graph(
        nodes, "tiny-offseg",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, h, w, 3] if nhwc else [batch, 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes, out_h, out_w])],
        [weight, numpy_helper.from_array(np.array(1, np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = {"offseg.model": "offseg-t", "offseg.num_classes": str(num_classes),
            "offseg.input_size": "dynamic" if dynamic else f"{size[0]} {size[1]}",
            "offseg.input_format": f"float32 normalized RGB {input_layout.upper()}", "offseg.output_kind": "logits",
            "offseg.input_layout": input_layout,
            "offseg.precision": "fp32", "offseg.mean_rgb": "123.675 116.28 103.53",
            "offseg.std_rgb": "58.395 57.12 57.375"}
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
