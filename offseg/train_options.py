"""offseg-train's command line, apart from its entry point: ``offseg-reproduce`` checks its ``--train-args``
against the same parser before any step runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.console import add_common_options, add_hidden_aliases
from runtime.output_policy import add_input, add_output

from .names import CARAFE_FORMS, DATASET_NAMES, MODEL_NAMES
from .recipes import Recipe

TRAIN_FILES = ("*.pth", "scalars.jsonl", "tensorboard")  # what offseg-train writes in --work-dir


def _accumulate(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps or 'auto', got {text!r}") from None


def train_parser() -> argparse.ArgumentParser:
    """offseg-train's options (``offseg-reproduce --train-args`` is checked against them before training)."""
    parser = argparse.ArgumentParser(prog="offseg-train", description="Train or fine-tune OffSeg with the "
                                     "dataset's official recipe (printed at start; every flag overrides it); "
                                     "multi-GPU: torchrun --nproc-per-node N --no-python offseg-train ...")
    parser.add_argument("--model", choices=MODEL_NAMES, help="model to train (default the --checkpoint's, on "
                        "--resume the run's, else offseg-t)")
    parser.add_argument("--dataset", default="synthetic", choices=DATASET_NAMES,
                        help="dataset layout (default built-in synthetic scenes, no files needed)")
    add_input(parser, "--data-root", type=str, help="dataset root folder (mmseg layout)")
    add_output(parser, "--work-dir", folder=True, names=TRAIN_FILES, default=Path("work_dirs/offseg"),
               help="checkpoints and logs")
    parser.add_argument("--iters", type=int, help="iterations (default the recipe's; 160000, 80000 for Pascal "
                        "Context and COCO-Stuff with offseg-b)")
    parser.add_argument("--lr-end", type=int, metavar="N", help="iteration where the poly decay reaches 0 "
                        "(default the recipe's, at most --iters; 80000 for COCO-Stuff)")
    parser.add_argument("--batch-size", type=int, help="images per process (default the recipe's total batch, 16 "
                        "or 8 for Cityscapes, divided over the torchrun processes)")
    parser.add_argument("--accumulate", type=_accumulate, default=1, metavar="N|auto",
                        help="gradient accumulation: micro-batches per optimizer step (default 1); 'auto' reaches "
                             "the recipe's total batch (--iters counts optimizer steps)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast) on CUDA; the "
                        "official runs and the default are FP32")
    parser.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                        help="torch.compile the training step (backend default inductor; aot_eager compiles "
                             "without generating kernels); the first iteration takes minutes. Checkpoints are "
                             "the same as without it")
    parser.add_argument("--carafe", choices=CARAFE_FORMS, default="taps", help="CARAFE form: taps (default, the "
                        "reference), unfold (batched matrix products) or fused (Triton kernels for CARAFE and the "
                        "neighbour similarity, CUDA); the same gradients to rounding, the GPU forms opt-in until "
                        "benchmarks/gpu.py has measured them")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="crop size (default the dataset's)")
    parser.add_argument("--lr", type=float, default=Recipe.lr, help=f"AdamW learning rate (default {Recipe.lr:g}; "
                        "head x10)")
    parser.add_argument("--warmup-iters", type=int, default=Recipe.warmup_iters,
                        help=f"linear warm-up iterations (default {Recipe.warmup_iters})")
    parser.add_argument("--checkpoint-interval", type=int, help="iterations between checkpoints "
                        "(WORK_DIR/latest.pth, the resume point; default the recipe's, 16000 or 8000)")
    parser.add_argument("--keep-checkpoints", type=int, default=0, metavar="N",
                        help="also keep the last N checkpoints as iter_<N>.pth (default 0: only latest.pth and "
                             "best.pth, the weights of the best validation mIoU)")
    parser.add_argument("--eval-interval", type=int, help="iterations between validations (default the "
                        "recipe's, 16000 or 8000)")
    parser.add_argument("--eval-images", type=int, metavar="N", help="validate on the first N images (default the "
                        "whole validation split)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data order, augmentations, weights)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pth")
    start = parser.add_mutually_exclusive_group()
    add_input(start, "--checkpoint", help="weights to start from (official or ours); another "
                       "class count re-initialises only the class-dependent tensors")
    add_input(start, "--pretrained-backbone", metavar="PATH", help="EfficientFormerV2 ImageNet "
                       "checkpoint as released (eformer_s1_450.pth for T, s2 for B, l for L): the official start")
    add_common_options(parser)
    add_hidden_aliases(parser, {"--workdir": "--work-dir"})
    return parser


def train_args_given(tokens: tuple[str, ...]) -> set[str]:
    """The option destinations (``work_dir``, ``iters`` ...) that ``tokens`` set as offseg-train would parse them;
    OffsegError in one sentence unless they parse (checked before a run that would start offseg-train with them,
    e.g. ``offseg-reproduce --train-args``)."""
    from runtime.errors import OffsegError

    def refuse(message: str, *_) -> None:
        raise OffsegError(f"--train-args: {message} (offseg-train --help lists its options)")

    parser = train_parser()
    parser.error = refuse  # argparse's usage-and-exit, here one sentence
    parser.exit = lambda *_: refuse("--help is not a training option")
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # the namespace then holds only what the tokens set
    given, unknown = parser.parse_known_args(list(tokens))
    if unknown:
        refuse(f"offseg-train does not take {' '.join(unknown)}")
    return set(vars(given))
