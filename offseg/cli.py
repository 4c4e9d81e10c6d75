"""Console entry points of the PyTorch side: ``offseg-info`` and ``offseg-demo``."""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.console import add_common_options, run

from .zoo import MODELS


def _info(args: argparse.Namespace) -> int:
    from .info import format_info, model_info
    print(format_info(model_info(args.model, args.num_classes, tuple(args.input_size))))
    return 0


def info_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-info", description="Parameters and MACs of an OffSeg model, "
                                     "next to the paper's figures.")
    parser.add_argument("--model", default="offseg-t", choices=list(MODELS), help="model name (default offseg-t)")
    parser.add_argument("--num-classes", type=int, default=150, help="number of classes (default 150, ADE20K)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input size for the MAC count (default 512 512)")
    add_common_options(parser)
    return run(_info, parser, argv)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .info import format_info, model_info
    result = run_demo(args.workdir, args.model, args.checkpoint, args.image, args.seed)
    print(format_info(model_info(result.model_name)))
    h, w = result.image_size
    print(f"segmented a {h} {w} image with {result.model_name}: {result.classes_seen} classes present")
    for path in result.files:
        print(f"wrote {path}")
    return 0


def demo_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-demo", description="Segment an image with OffSeg and save the "
                                     "input, a colourized mask and an overlay.")
    parser.add_argument("--workdir", type=Path, default=Path("offseg-demo"), help="output folder (default ./offseg-demo)")
    parser.add_argument("--model", default=None, choices=list(MODELS),
                        help="model name (default: from the checkpoint, else offseg-t)")
    parser.add_argument("--checkpoint", type=Path, help="official mmseg or offseg checkpoint (default: random weights)")
    parser.add_argument("--image", type=Path, help="image to segment (default: a built-in synthetic scene)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic scene and random weights")
    add_common_options(parser)
    return run(_demo, parser, argv)
