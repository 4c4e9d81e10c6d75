"""A DeepStream package: the nvinfer config as DeepStream reads it (GLib key file, and its YAML twin), labels.txt
and a gst-launch-1.0 line with nvsegvisual, for an export whose input is float RGB 0-255 (what nvinfer feeds),
planar (NCHW) or interleaved (NHWC: ``network-input-order=1``, nvinfer's ``NvDsInferConvert_C3ToL3Float``; its
``infer-dims`` stay ``3;H;W``, which nvinfer reorders to H;W;3 for an NHWC input in ``checkBackendParams``).

nvinfer computes ``y = net-scale-factor * (x - offsets)`` with one scale for all channels, so ImageNet's
per-channel std only fits inside the graph: ``net-scale-factor=1`` and ``offsets=0;0;0`` are then exact. Its
segmentation parser (``network-type=2``) starts each pixel at -1 and keeps a class only above
``segmentation-threshold``, so it needs non-negative scores: probabilities (``probs``), never logits. Labels go out
as tensor meta (``network-type=100``, ``output-tensor-meta=1``) for an application probe, TAO's way.
"""
from __future__ import annotations

from pathlib import Path

from calibration.nvinfer import CONFIG
from runtime.backends import ModelInfo
from runtime.errors import OffsegError

YAML_CONFIG = "config_infer_primary_offseg.yml"
PIPELINE = "pipeline.sh"
HEADER = """# nvinfer config written by offseg-export for {model} ({classes} classes, input {h}x{w}).
# The graph takes float RGB 0-255 ({layout}) and normalizes inside: net-scale-factor=1 and offsets=0 are exact.
# model-engine-file: build it on the device with our FP32 pins kept (offseg-export --onnx {onnx} --format engine
# {fp16flag}); without it nvinfer builds onnx-file itself, and that engine loses our FP32 pins.
"""


def check_model(info: ModelInfo, source: Path | None = None) -> None:
    """OffsegError unless nvinfer can feed and parse the export described by ``info`` (``source``: the ONNX file it
    describes, when one was given, which cannot change; else the export's flags can)."""
    for wrong, problem, flags in (
            (info.input_format != "float-rgb-0-255", "DeepStream's nvinfer feeds float RGB 0-255",
             "--input-format float-rgb-0-255"),
            (info.output_kind == "logits", "nvinfer's segmentation parser starts each pixel at -1 and drops negative "
             "logits", "--output-kind probs (or labels for an application that reads tensor meta)"),
            (info.input_size is None, "nvinfer needs a fixed input size", "--input-size H W, without --dynamic")):
        if wrong and source is None:
            raise OffsegError(f"{problem}: export with {flags}")
        if wrong:
            raise OffsegError(f"{problem}, and {source} was exported otherwise: export the package from the "
                              f"checkpoint instead (offseg-export --checkpoint CHECKPOINT --format deepstream; its "
                              f"defaults are what nvinfer needs)")


def nvinfer_properties(info: ModelInfo, onnx_name: str, fp16: bool) -> dict[str, str]:
    """The [property] keys of the nvinfer config (values as DeepStream's parser reads them)."""
    h, w = info.input_size
    probs = info.output_kind == "probs"
    props = {
        "gpu-id": "0", "gie-unique-id": "1", "process-mode": "1", "interval": "0", "batch-size": "1",
        "onnx-file": onnx_name, "model-engine-file": Path(onnx_name).stem + (".fp16.plan" if fp16 else ".fp32.plan"),
        "labelfile-path": "labels.txt", "network-mode": "2" if fp16 else "0",  # 0 FP32, 2 FP16
        "infer-dims": f"3;{h};{w}",  # C;H;W for either input order
        "network-input-order": "1" if info.input_layout == "nhwc" else "0",  # 0 NCHW, 1 NHWC
        "model-color-format": "0",  # RGB
        "net-scale-factor": "1.0", "offsets": "0;0;0",
        "maintain-aspect-ratio": "1", "symmetric-padding": "0",  # offseg-run's letterbox: scaled, padded bottom/right
        "scaling-filter": "1",  # bilinear
        "output-blob-names": info.output_kind, "num-detected-classes": str(info.num_classes),
        "network-type": "2" if probs else "100",
        "segmentation-threshold": "0.0", "segmentation-output-order": "1" if info.output_layout == "nhwc" else "0",
    }
    if not probs:
        props["output-tensor-meta"] = "1"
    return props


def output_size(info: ModelInfo) -> tuple[int, int]:
    """(h, w) of the mask nvinfer attaches: the probabilities' size, or the labels' (the input's)."""
    h, w = info.input_size
    return (h // 4, w // 4) if info.output_kind == "probs" else (h, w)


def key_file(props: dict[str, str], header: str) -> str:
    return header + "[property]\n" + "".join(f"{key}={value}\n" for key, value in props.items())


def yaml_file(props: dict[str, str], header: str) -> str:
    return header + "property:\n" + "".join(f"  {key}: {value}\n" for key, value in props.items())


def pipeline_line(info: ModelInfo) -> str:
    """A gst-launch-1.0 script: an H.264 MP4 (first argument) through nvinfer, masks drawn by nvsegvisual at the
    model's output size. The muxer keeps the video's size (MUX_WIDTH/MUX_HEIGHT), so nvinfer letterboxes."""
    h, w = info.input_size
    out_h, out_w = output_size(info)
    show = (f"nvsegvisual width={out_w} height={out_h} ! nvvideoconvert ! nveglglessink" if info.output_kind == "probs"
            else "fakesink  # labels are tensor meta: an application probe reads them (nvsegvisual needs probs)")
    return ("#!/bin/sh\n# Usage: sh pipeline.sh VIDEO.mp4 (run from this folder, on a DeepStream machine)\n"
            "# nvstreammux scales every frame to its width x height, stretching any other aspect ratio: set\n"
            "# MUX_WIDTH and MUX_HEIGHT to the video's own size (default 1920x1080); nvinfer then letterboxes each\n"
            f"# frame into the model's {w}x{h} input as offseg-run does (maintain-aspect-ratio=1).\n"
            'gst-launch-1.0 filesrc location="$1" ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 '
            'nvstreammux name=m batch-size=1 width="${MUX_WIDTH:-1920}" height="${MUX_HEIGHT:-1080}" ! '
            f"nvinfer config-file-path={CONFIG} ! {show}\n")


def write_package(folder: Path, info: ModelInfo, onnx_name: str, fp16: bool) -> list[str]:
    """Write the config, its YAML twin, labels.txt and pipeline.sh into ``folder``; returns the names written."""
    check_model(info)
    h, w = info.input_size
    layout = "interleaved NHWC" if info.input_layout == "nhwc" else "planar NCHW"
    header = HEADER.format(model=info.name, classes=info.num_classes, h=h, w=w, onnx=onnx_name, layout=layout,
                           fp16flag="--fp16" if fp16 else "")
    props = nvinfer_properties(info, onnx_name, fp16)
    names = info.classes or tuple(f"class{i}" for i in range(info.num_classes))
    files = {CONFIG: key_file(props, header), YAML_CONFIG: yaml_file(props, header),
             "labels.txt": "".join(f"{name}\n" for name in names), PIPELINE: pipeline_line(info)}
    for name, text in files.items():
        (folder / name).write_text(text)
    return list(files)
