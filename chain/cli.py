"""Console entry points of the chain: ``offseg-info``, ``offseg-demo``, ``offseg-reproduce`` and ``offseg-bench``."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from offseg.names import DATASET_NAMES, MODEL_NAMES
from offseg.train_options import train_args_given
from runtime.console import add_common_options, add_engine_host_code_option, add_hidden_aliases, given, run
from runtime.errors import OffsegError
from runtime.limits import check_at_least, check_input_size
from runtime.output_policy import add_input, add_output

from .bench import BACKENDS, BENCH_DESCRIPTION, format_report, run_bench

# offseg-train options offseg-reproduce sets itself (the later steps read what they name), by destination
REPRODUCE_OWNS = ("model", "dataset", "data_root", "work_dir", "pretrained_backbone", "resume")

BENCH_FILES = ("*.onnx", "*.plan", "*.plan.json", "bench-*")  # what offseg-bench writes in --work-dir


def _demo(args: argparse.Namespace) -> int:
    from .demo import RESUME_HINT, DemoConfig, format_table, miou_note, run_demo
    if args.checkpoint and args.model:
        raise OffsegError(f"--model chooses the model the demo trains, and with --checkpoint it trains none (the "
                          f"checkpoint's own model is exported): drop --model {args.model}")
    overrides = {"model": args.model or "offseg-t", "checkpoint": args.checkpoint}
    config = DemoConfig.quick(args.work_dir, **overrides) if args.quick else \
        DemoConfig(workdir=args.work_dir, **overrides)
    try:
        rows = run_demo(config)
    except KeyboardInterrupt as interrupt:
        interrupt.add_note(f"offseg-demo stopped: {RESUME_HINT} (finished steps are reused, training resumes from "
                           "its last checkpoint)")
        raise
    print(format_table(rows))
    print(miou_note(config))
    print(f"wrote {args.work_dir / 'report.md'} (table, videos, validation reports with side-by-side pictures)")
    return 0 if all(r["within_bound"] for r in rows) else 1


def demo_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-demo", description="The whole chain offline: train a model on "
                                     "synthetic scenes (or use --checkpoint), export, calibrate INT8, run on a "
                                     "video, validate, report.")
    add_output(parser, "--work-dir", folder=True, default=Path("offseg-demo"),
                        help="output folder (default ./offseg-demo)")
    parser.add_argument("--model", default=None, choices=MODEL_NAMES, help="model to train (default offseg-t)")
    add_input(parser, "--checkpoint", help="use this checkpoint instead of training on synthetic scenes "
                        "(its classes must be the synthetic ones for the validation step)")
    parser.add_argument("--quick", action="store_true", help="the short run, the first thing to try (100 training "
                        "iterations, small inputs; what CI runs)")
    add_common_options(parser)
    add_hidden_aliases(parser, {"--workdir": "--work-dir"})
    return run(_demo, parser, argv)


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import ReproduceConfig, format_report, reproduce
    try:
        train_args = tuple(shlex.split(args.train_args))
    except ValueError as error:  # an unclosed quote
        raise OffsegError(f"--train-args {args.train_args!r}: {error} (quote it as a shell would)") from None
    set_there = train_args_given(train_args)
    owned = [dest for dest in REPRODUCE_OWNS if dest in set_there]
    if owned == ["resume"]:
        raise OffsegError("--train-args --resume: a re-run of offseg-reproduce resumes its training by itself")
    if owned:
        flag = "--" + owned[0].replace("_", "-")
        raise OffsegError(f"--train-args {flag}: offseg-reproduce sets {flag} itself (the evaluation, export and "
                          f"validation read what it names): give offseg-reproduce {flag} instead")
    check_at_least(("--eval-images", args.eval_images, 1))
    if args.input_size:
        check_input_size(*args.input_size)
    config = ReproduceConfig(dataset=args.dataset, model=args.model, data_root=args.data_root, work_dir=args.work_dir,
                             gpus=args.gpus, pretrained_backbone=args.pretrained_backbone,
                             train_args=train_args, eval_images=args.eval_images,
                             input_size=tuple(args.input_size) if args.input_size else None)
    report = reproduce(config, dry_run=args.dry_run)
    if report is None:
        return 0
    print(format_report(report))
    print(f"wrote {args.work_dir / 'report.md'} and report.json")
    return 0 if report.exported_within_bound else 1


def reproduce_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-reproduce", description="One paper row end to end: train with "
                                     "the official recipe (on N GPUs through torchrun), evaluate the final "
                                     "checkpoint by the paper's test protocol, export, validate the exported model, "
                                     "and report the measured mIoU beside the paper's. A re-run resumes.")
    parser.add_argument("--dataset", default="ade20k", choices=DATASET_NAMES, help="dataset of the paper row")
    parser.add_argument("--model", default="offseg-t", choices=MODEL_NAMES, help="model of the paper row")
    add_input(parser, "--data-root", type=str, help="dataset root folder (mmseg layout; not needed for synthetic)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs to train on (more than 1: torchrun)")
    add_input(parser, "--pretrained-backbone", metavar="PATH", help="EfficientFormerV2 ImageNet "
                        "checkpoint (eformer_s1_450.pth for T, s2 for B, l for L): the official start")
    add_output(parser, "--work-dir", folder=True, default=Path("offseg-reproduce"), help="output folder")
    parser.add_argument("--train-args", default="", metavar="'FLAGS'", help="more offseg-train flags in one "
                        "string, overriding the recipe (e.g. '--iters 1000'; default none)")
    parser.add_argument("--eval-images", type=int, help="evaluate and validate on the first N images (default all, "
                        "as the paper)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="exported input size "
                        "(default the dataset's crop, the sliding window)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    add_common_options(parser)
    return run(_reproduce, parser, _train_args_joined(sys.argv[1:] if argv is None else argv))


def _train_args_joined(argv: list[str]) -> list[str]:
    """``--train-args X`` as ``--train-args=X``: argparse takes a value that looks like one flag (``--amp``) for an
    option of its own and says "expected one argument"."""
    joined, rest = [], iter(argv)
    for token in rest:
        following = next(rest, None) if token == "--train-args" else None
        joined.append(token if following is None else f"--train-args={following}")
    return joined


def _info(args: argparse.Namespace) -> int:
    if args.file is not None:
        from .describe import describe_file
        for flag in given(args, ("model", "num_classes", "input_size")):
            raise OffsegError(f"{flag} chooses a model to count; {args.file} is described as it is: drop {flag}")
        print("\n".join(describe_file(args.file)))
        return 0
    from offseg.info import format_info, model_info
    check_input_size(*args.input_size)
    check_at_least(("--num-classes", args.num_classes, 1))
    print(format_info(model_info(args.model, args.num_classes, tuple(args.input_size))))
    return 0


def info_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-info", description="What a model file is (a .pth checkpoint, an "
                                     ".onnx model, a .plan engine, or offseg-export's Triton repository or DeepStream "
                                     "package: model, classes, precision, input, weights, training), or without a file "
                                     "the parameters and MACs of an OffSeg model next to the paper's figures.")
    add_input(parser, "file", nargs="?", metavar="FILE", help="a .pth, .onnx or .plan file, or a Triton repository or "
              "DeepStream package folder, to describe")
    parser.add_argument("--model", default="offseg-t", choices=MODEL_NAMES, help="model to count (default offseg-t)")
    parser.add_argument("--num-classes", type=int, default=150, help="number of classes (default 150, ADE20K)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input size for the MAC count (default 512 512)")
    add_common_options(parser)
    return run(_info, parser, argv)


def _bench(args: argparse.Namespace) -> int:
    if args.checkpoint and given(args, ("num_classes",)):
        raise OffsegError(f"--num-classes sets the classes of fresh weights; {args.checkpoint} has its own: drop "
                          "--num-classes")
    check_at_least(("--num-classes", args.num_classes, 1), ("--iters", args.iters, 1),
                   ("--batch-size", args.batch_size, 1), ("--warmup", args.warmup, 0),
                   ("--pipeline-frames", args.pipeline_frames, 1))
    if given(args, ("pipeline_frames",)) and not args.pipeline:
        raise OffsegError("--pipeline-frames sets the length of the --pipeline video; add --pipeline")
    check_input_size(*args.input_size)
    if not args.backends:
        raise OffsegError(f"--backends is empty; choose from {', '.join(BACKENDS)}")
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        raise OffsegError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    report = run_bench(args)
    print(format_report(report))
    if args.json:
        from runtime.sinks import write_file
        write_file(args.json, json.dumps(report, indent=2) + "\n")
    return 0


def bench_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-bench", description=BENCH_DESCRIPTION)
    parser.add_argument("--model", choices=MODEL_NAMES, help="model to time (default the checkpoint's, else "
                        "offseg-t)")
    add_input(parser, "--checkpoint", help="weights to time (default fresh weights; the speed is the "
                        "same)")
    parser.add_argument("--num-classes", type=int, default=150, help="classes of the fresh weights (a checkpoint "
                        "has its own)")
    parser.add_argument("--backends", type=lambda s: [b.strip() for b in s.split(",") if b.strip()],
                        default=["torch", "onnx-fp32", "onnx-int8"],
                        help=f"comma-separated, from {','.join(BACKENDS)} (default torch,onnx-fp32,onnx-int8)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input size, multiples of 32")
    parser.add_argument("--batch-size", type=int, default=1, help="images per call")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per backend (they measure its memory)")
    parser.add_argument("--iters", type=int, default=20, help="timed rounds (each backend once per round)")
    parser.add_argument("--pipeline", action="store_true", help="also offseg-run FPS vs bare inference FPS")
    parser.add_argument("--pipeline-frames", type=int, default=60, help="frames of the --pipeline video")
    add_output(parser, "--work-dir", folder=True, names=BENCH_FILES, default=Path("offseg-bench"),
                        help="cached exports (default ./offseg-bench)")
    add_output(parser, "--json", help="write the figures as JSON")
    add_engine_host_code_option(parser)
    add_common_options(parser)
    add_hidden_aliases(parser, {"--workdir": "--work-dir", "--size": "--input-size", "--batch": "--batch-size"})
    return run(_bench, parser, argv)


