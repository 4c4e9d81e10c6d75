"""OffSeg -> ONNX: torch's dynamo exporter, constant folding, onnxslim, the offset-learning head as one unit.

Steps (each a small function): wrap the model for deployment (optional uint8 or NHWC input, normalization in the
graph, fused offset-learning head, optional labels output), export, fold constants (onnxscript's folder, which
keeps torch's module scopes), name the head's nodes under one scope, simplify with onnxslim, turn the scoped
nodes into an ONNX local function ``offseg.OffsetLearning`` (unless inlined), add metadata, run the full
``onnx.checker`` and write the file atomically.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import OffsegError
from offseg.names import FREQFUSION_FORMS
from runtime.backends import LABEL_DTYPES, LAYOUTS, OUTPUT_KINDS
from runtime.preprocess import INPUT_FORMATS, INPUT_LAYOUTS, MEAN_RGB, SIZE_DIVISOR, STD_RGB, input_format_text

from calibration.files import FUNCTION_DOMAIN, file_sha256, save_checked
from calibration.graph import extract_function, rename_scope
from .opsets import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from calibration.precision import FUSION_FP32_PARTS, FUSION_MODULE, FUSION_SCOPE, HEAD_MODULE, HEAD_SCOPE

log = logging.getLogger(__name__)

FUSION_PART = re.compile(rf"'head\.freqfusions\.\d+\.({'|'.join(FUSION_FP32_PARTS)})'")  # pinned whole

RANDOM_WEIGHTS = "RANDOM, UNTRAINED (no checkpoint): for speed tests only, its predictions are noise"


@dataclass(frozen=True)
class OnnxOptions:
    """What to export. ``input_size`` is (H, W); with ``dynamic`` it is only the example size."""

    input_size: tuple[int, int] = (512, 512)
    dynamic: bool = False
    opset: int = DEFAULT_OPSET
    input_format: str = "normalized"  # a key of runtime.preprocess.INPUT_FORMATS
    input_layout: str = "nchw"  # nhwc: (N, H, W, 3) in, transposed to NCHW by the graph's first node
    output_kind: str = "logits"  # logits, labels (argmax at the input size) or probs (softmax of the logits)
    label_dtype: str = "auto"  # labels: uint8, int32, or auto (uint8 when the classes fit)
    output_layout: str = "nchw"
    fused_head: bool = True
    head_as_function: bool = True
    batch: int = 1  # static batch size (dynamic exports: any)
    freqfusion_form: str = "gather"  # gather: few large ops (ONNX Runtime, OpenVINO); taps: the readable form

    def validate(self) -> None:
        from runtime.limits import check_input_size
        check_input_size(*self.input_size, "input size")
        for name, value, choices in (("input format", self.input_format, tuple(INPUT_FORMATS)),
                                     ("input layout", self.input_layout, INPUT_LAYOUTS),
                                     ("output kind", self.output_kind, OUTPUT_KINDS),
                                     ("label dtype", self.label_dtype, ("auto", *LABEL_DTYPES)),
                                     ("layout", self.output_layout, LAYOUTS)):
            if value not in choices:
                raise OffsegError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.freqfusion_form not in FREQFUSION_FORMS:
            raise OffsegError(f"FreqFusion form must be one of {', '.join(FREQFUSION_FORMS)}, "
                              f"got {self.freqfusion_form!r}")
        if self.batch < 1:
            raise OffsegError(f"batch must be at least 1, got {self.batch}")
        if self.opset < MIN_OPSET:
            raise OffsegError(f"opset {self.opset} is too old; use {MIN_OPSET} or newer")
        if self.opset > MAX_OPSET:
            raise OffsegError(f"opset {self.opset} is newer than this exporter writes; use {MIN_OPSET}-{MAX_OPSET}")


@dataclass
class OnnxExport:
    """What ``export_onnx`` wrote."""

    path: Path
    options: OnnxOptions
    input_name: str
    output_name: str
    metadata: dict[str, str] = field(default_factory=dict)


class FusedOffsetLearning(nn.Module):
    """Runs an OffsetLearning module's exact fused form (used only while exporting)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.fused_forward(x)


class DeployModel(nn.Module):
    """The model as deployed: RGB in, NCHW or NHWC (normalized, or uint8 / float 0-255 with mean/std in the graph);
    logits, probabilities or labels out, NCHW or NHWC."""

    def __init__(self, model: nn.Module, options: OnnxOptions):
        super().__init__()
        if options.freqfusion_form == "gather":
            from offseg.models.freqfusion_gather import with_gather_fusions
            model = with_gather_fusions(model).eval()
        else:
            model = copy.deepcopy(model).eval()
        if options.fused_head:
            model.head.offset_learning = FusedOffsetLearning(model.head.offset_learning)
        self.backbone, self.head = model.backbone, model.head
        self.num_classes = model.num_classes
        self.options = options
        self.register_buffer("mean", torch.tensor(MEAN_RGB).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD_RGB).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        options = self.options
        if options.input_format != "normalized":
            images = images.float()  # first: TensorRT's parser refuses a Transpose of a UINT8 tensor (measured)
        if options.input_layout == "nhwc":  # the first node (after that Cast): a reformat to TensorRT
            images = images.permute(0, 3, 1, 2)
        if options.input_format != "normalized":
            images = (images - self.mean) / self.std
        logits = self.head(self.backbone(images))
        if options.output_kind == "labels":
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
            labels = logits.argmax(dim=1).to(label_dtype(self.num_classes, options.label_dtype))
            return labels.unsqueeze(-1) if options.output_layout == "nhwc" else labels
        scores = logits.softmax(dim=1) if options.output_kind == "probs" else logits
        return scores.permute(0, 2, 3, 1) if options.output_layout == "nhwc" else scores


def label_dtype(num_classes: int, requested: str = "auto") -> torch.dtype:
    """The labels' dtype: ``requested``, or with auto uint8 when the classes fit (the cheapest transfer), else
    int32. Raises OffsegError when uint8 cannot hold the class indices."""
    if requested == "uint8" and num_classes > 256:
        raise OffsegError(f"uint8 labels cannot hold {num_classes} classes: use --label-dtype int32")
    if requested == "auto":
        requested = "uint8" if num_classes <= 256 else "int32"
    return {"uint8": torch.uint8, "int32": torch.int32}[requested]


def input_shape(options: OnnxOptions, batch: int) -> tuple[int, int, int, int]:
    """The graph input's shape at the export size: (N, 3, H, W), or (N, H, W, 3) for an nhwc input."""
    h, w = options.input_size
    return (batch, h, w, 3) if options.input_layout == "nhwc" else (batch, 3, h, w)


def example_input(options: OnnxOptions) -> torch.Tensor:
    """Batch 2 for dynamic exports: torch.export specializes a batch of 1 to a constant."""
    shape = input_shape(options, 2 if options.dynamic else options.batch)
    if options.input_format == "uint8-rgb":
        return torch.randint(0, 256, shape, dtype=torch.uint8)
    if options.input_format == "float-rgb-0-255":
        return torch.randint(0, 256, shape).float()
    return torch.randn(shape)


def dynamic_shapes(options: OnnxOptions) -> dict | None:
    """Batch, height and width free; height and width multiples of 32."""
    if not options.dynamic:
        return None
    batch = torch.export.Dim("batch", min=1, max=64)
    rows = torch.export.Dim("rows32", min=2, max=128)
    cols = torch.export.Dim("cols32", min=2, max=128)
    first = 1 if options.input_layout == "nhwc" else 2  # the axis of the height
    return {"images": {0: batch, first: SIZE_DIVISOR * rows, first + 1: SIZE_DIVISOR * cols}}


def trace(model: DeployModel, options: OnnxOptions):
    """torch.export + ONNX translation (no onnxscript rewriter: it takes minutes on this graph)."""
    with torch.no_grad():
        program = torch.onnx.export(model, (example_input(options),), dynamo=True, optimize=False,
                                    opset_version=options.opset, dynamic_shapes=dynamic_shapes(options),
                                    input_names=["images"], output_names=[options.output_kind], verbose=False)
    return program.model


def node_scope(torch_scopes: str) -> str | None:
    """The name scope of a node, from torch's name-scope metadata: ``OffsetLearning`` and ``FreqFusion<i>`` for
    those modules (what the precision pins and the local function use; ``FreqFusion<i>/<part>`` for the gather
    form's parts pinned whole), else the innermost module path
    (``backbone.stages.2.blocks.1.mlp``), so node names, TensorRT layer names and INT8 groups stay readable."""
    if f"'{HEAD_MODULE}'" in torch_scopes:
        return HEAD_SCOPE
    fusion = FUSION_MODULE.search(torch_scopes)
    if fusion:
        part = FUSION_PART.search(torch_scopes)
        return f"{FUSION_SCOPE}{fusion.group(1)}" + (f"/{part.group(1)}" if part else "")
    scopes = re.findall(r"'([\w.]*)'", torch_scopes)  # ['', 'backbone', ..., innermost module, aten op]
    return scopes[-2] if len(scopes) >= 2 and scopes[-2] else None


def fold_and_scope(ir_model) -> dict[str, str]:
    """Constant-fold (keeps node metadata) and prefix node names with their scope (``OffsetLearning/...``,
    ``FreqFusion0/...``, ``backbone.stages.2.blocks.1.mlp/...``); returns output value name -> scope."""
    import onnxscript.optimizer as optimizer
    optimizer.fold_constants_ir(ir_model, onnx_shape_inference=True)
    optimizer.remove_unused_nodes(ir_model)
    scopes = {}
    for node in ir_model.graph:
        scope = node_scope(node.metadata_props.get("pkg.torch.onnx.name_scopes", ""))
        if scope:
            node.name = rename_scope(scope, node.name)
            scopes.update({value.name: scope for value in node.outputs})
    return scopes


def simplify(proto, scopes: dict[str, str]):
    """onnxslim; nodes it creates (e.g. Conv+BatchNorm fused) get the scope of the value they produce."""
    import onnxslim
    proto = onnxslim.slim(proto)
    for node in proto.graph.node:
        scope = scopes.get(node.output[0]) if node.output else None
        if scope and "/" not in node.name:
            node.name = rename_scope(scope, node.name)
    return proto


def label_metadata(num_classes: int, checkpoint: Path | None, content: dict | None = None) -> dict[str, str]:
    """``offseg.classes`` / ``offseg.palette`` for the runtime's legend: what the checkpoint carries (``content``:
    the file as ``read_file`` returned it, when the caller has read it), else the class names of the released
    dataset with that many classes (colours then come from the runtime)."""
    import json

    from offseg.checkpoint import checkpoint_labels, read_file
    from offseg.data.synthetic import CLASSES as SYNTHETIC_CLASSES
    from offseg.data.synthetic import PALETTE as SYNTHETIC_PALETTE
    from runtime.class_names import known_classes
    content = read_file(checkpoint) if checkpoint and content is None else content
    classes, palette = checkpoint_labels(content, num_classes, f"checkpoint {checkpoint}") \
        if checkpoint else (None, None)
    classes = classes or known_classes(num_classes)
    if classes and tuple(classes) == SYNTHETIC_CLASSES and not palette:
        palette = SYNTHETIC_PALETTE.tolist()
    labels = {"offseg.classes": json.dumps(list(classes))} if classes else {}
    if palette:
        labels["offseg.palette"] = json.dumps(palette)
    return labels


def metadata(model_name: str, num_classes: int, options: OnnxOptions, checkpoint: Path | None,
             labels: dict[str, str] | None = None) -> dict[str, str]:
    """The ONNX file's ``offseg.*`` metadata; ``labels``: ``label_metadata``'s, when the caller has it."""
    from offseg import __version__
    h, w = options.input_size
    return {**(label_metadata(num_classes, checkpoint) if labels is None else labels),
        "offseg.model": model_name,
        "offseg.num_classes": str(num_classes),
        "offseg.input_size": "dynamic" if options.dynamic else f"{h} {w}",
        "offseg.input_format": input_format_text(options.input_format, options.input_layout),
        "offseg.input_layout": options.input_layout,
        "offseg.mean_rgb": " ".join(map(str, MEAN_RGB)),
        "offseg.std_rgb": " ".join(map(str, STD_RGB)),
        "offseg.output_kind": options.output_kind,
        "offseg.output_layout": options.output_layout,
        **({"offseg.label_dtype": str(label_dtype(num_classes, options.label_dtype)).removeprefix("torch.")}
           if options.output_kind == "labels" else {}),
        "offseg.fused_head": str(options.fused_head).lower(),
        "offseg.freqfusion_form": options.freqfusion_form,
        "offseg.precision": "fp32",
        "offseg.opset": str(options.opset),
        "offseg.version": __version__,
        "offseg.checkpoint_sha256": file_sha256(checkpoint) if checkpoint else "none (fresh weights)",
        "offseg.weights": "trained (from the checkpoint)" if checkpoint else RANDOM_WEIGHTS,
    }


def export_onnx(model: nn.Module, model_name: str, path: str | os.PathLike, options: OnnxOptions = OnnxOptions(),
                checkpoint: Path | None = None, labels: dict[str, str] | None = None) -> OnnxExport:
    """Export ``model`` (an OffSeg, weights loaded from ``checkpoint`` if given) to ``path``; raises OffsegError
    for bad options or paths. The checkpoint's class names and palette go into the metadata for the legend
    (``labels``: ``label_metadata``'s, when the caller has read the checkpoint)."""
    import onnx_ir as ir

    options.validate()
    path = Path(path)
    if not path.parent.is_dir():
        state = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise OffsegError(f"output folder {path.parent} {state}")
    deploy = DeployModel(model, options).eval()
    log.info("tracing %s (%s, opset %d)", model_name, "dynamic" if options.dynamic else "static", options.opset)
    ir_model = trace(deploy, options)
    log.info("folding constants")
    scopes = fold_and_scope(ir_model)
    log.info("simplifying with onnxslim")
    proto = simplify(ir.serde.serialize_model(ir_model), scopes)
    if options.head_as_function:
        proto = extract_function(proto, HEAD_SCOPE, FUNCTION_DOMAIN)
    meta = metadata(model_name, deploy.num_classes, options, checkpoint, labels)
    proto.producer_name, proto.doc_string = "offseg-deploy", f"OffSeg {model_name} exported by offseg-deploy"
    save_checked(proto, meta, path)
    return OnnxExport(path, options, proto.graph.input[0].name, proto.graph.output[0].name, meta)
