"""``offseg-export``: an OffSeg model (checkpoint or fresh weights) to ONNX."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from runtime.console import add_common_options, run

from offseg.zoo import MODELS

NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._export", "torch.export")


def _export(args: argparse.Namespace) -> int:
    from offseg import build_model
    from offseg.checkpoint import build_from_checkpoint
    from runtime.errors import OffsegError

    from .onnx import OnnxOptions, export_onnx

    if not args.debug:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    options = OnnxOptions(input_size=tuple(args.input_size), dynamic=args.dynamic, opset=args.opset,
                          fold_normalization=args.fold_normalization, output_kind=args.output_kind,
                          fused_head=not args.unfused_head, head_as_function=not args.inline_head)
    options.validate()
    if args.checkpoint:
        model, name = build_from_checkpoint(args.checkpoint, args.model)
        if args.num_classes is not None and args.num_classes != model.num_classes:
            raise OffsegError(f"--num-classes {args.num_classes} does not match the checkpoint "
                              f"({model.num_classes} classes); drop the option or use another checkpoint")
    else:
        name = args.model or "offseg-t"
        model = build_model(name, args.num_classes or 150).eval()
    output = args.output or Path(f"{name}.onnx")
    start = time.perf_counter()
    result = export_onnx(model, name, output, options, args.checkpoint)
    size_mb = result.path.stat().st_size / 1e6
    print(f"wrote {result.path} ({size_mb:.1f} MB) in {time.perf_counter() - start:.0f} s: input "
          f"'{result.input_name}' {result.metadata['offseg.input_format']} ({result.metadata['offseg.input_size']}), "
          f"output '{result.output_name}' ({options.output_kind}), {model.num_classes} classes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-export", description="Export an OffSeg model to ONNX.")
    parser.add_argument("--model", choices=list(MODELS), help="model name (default: from the checkpoint, else offseg-t)")
    parser.add_argument("--checkpoint", type=Path, help="official mmseg or offseg checkpoint (default: fresh weights)")
    parser.add_argument("--num-classes", type=int, help="classes for fresh weights (default 150)")
    parser.add_argument("--output", type=Path, help="output .onnx path (default ./<model>.onnx)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input size, multiples of 32 (default 512 512; the example size with --dynamic)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--fold-normalization", action="store_true",
                        help="take uint8 RGB NCHW images; mean/std normalization inside the graph")
    parser.add_argument("--output-kind", choices=("logits", "labels"), default="logits",
                        help="logits (N, K, H/4, W/4) or labels (N, H, W) resized and argmaxed in the graph")
    parser.add_argument("--inline-head", action="store_true",
                        help="keep the offset-learning nodes inline (names under OffsetLearning/) instead of a "
                             "local function, for tools that cannot take ONNX functions")
    parser.add_argument("--unfused-head", action="store_true",
                        help="export the paper's unfused offset learning (for comparisons)")
    add_common_options(parser)
    return run(_export, parser, argv)
