"""Console entry points of the PyTorch side: ``offseg-train``, ``offseg-eval``."""
from __future__ import annotations

import argparse

from runtime.console import add_common_options, add_hidden_aliases, given, run
from runtime.errors import OffsegError
from runtime.limits import check_at_least
from runtime.output_policy import add_input, add_output
from runtime.progress import counted

from .names import CARAFE_FORMS, DATASET_NAMES, DEVICE_HELP, MODEL_NAMES, WINDOW_BATCH
from .train_options import train_parser


def _model_to_train(args: argparse.Namespace) -> str:
    """--model, else the model of the run --resume continues, else of the --checkpoint fine-tuned, else offseg-t."""
    from .checkpoint import checkpoint_model

    latest = args.work_dir / "latest.pth"
    if args.model is None and args.resume and latest.is_file():
        return checkpoint_model(latest)
    return args.model or (checkpoint_model(args.checkpoint) if args.checkpoint else "offseg-t")


def _check_fresh_work_dir(args: argparse.Namespace) -> None:
    """OffsegError for a fresh run (no --resume) in a --work-dir that holds a run's latest.pth: the new run would
    replace that run's resume point at its first checkpoint (a forgotten --resume after a stop cost the whole run)."""
    from .checkpoint import read_training_state

    latest = args.work_dir / "latest.pth"
    if args.resume or not latest.is_file():
        return
    try:
        state = read_training_state(latest)
        held = (f"{state.get('model', 'a model')} at iteration {state['iteration']} of "
                f"{state['config'].get('iters', '?')}")
    except OffsegError:
        held = "a file offseg-train cannot resume from"
    raise OffsegError(f"--work-dir {args.work_dir} already holds a training run ({latest}: {held}), which this fresh "
                      "run would overwrite: add --resume to continue it, or give another --work-dir to start afresh")


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train
    _check_fresh_work_dir(args)
    config = TrainConfig(model=_model_to_train(args), dataset=args.dataset, data_root=args.data_root,
                         work_dir=str(args.work_dir), iters=args.iters, batch_size=args.batch_size, lr_end=args.lr_end,
                         crop=tuple(args.crop) if args.crop else None, lr=args.lr, warmup_iters=args.warmup_iters,
                         checkpoint_interval=args.checkpoint_interval, keep_checkpoints=args.keep_checkpoints,
                         eval_interval=args.eval_interval, eval_images=args.eval_images,
                         workers=args.workers, seed=args.seed, deterministic=args.deterministic, resume=args.resume,
                         init_checkpoint=str(args.checkpoint) if args.checkpoint else None,
                         pretrained_backbone=str(args.pretrained_backbone) if args.pretrained_backbone else None,
                         accumulate=args.accumulate, amp=args.amp, compile=args.compile, carafe=args.carafe)
    print(f"wrote {train(config)}")
    return 0


def train_main(argv: list[str] | None = None) -> int:
    return run(_train, train_parser(), argv)


def _eval(args: argparse.Namespace) -> int:
    import json

    from .checkpoint import build_from_checkpoint
    from .data.datasets import LAYOUTS, SegmentationDataset
    from .devices import describe, torch_device
    from .evaluate import evaluate, mean_accuracy
    from .models.carafe import check_carafe_form, forced_form
    from .protocol import TestProtocol
    # before the checkpoint and the dataset are read
    check_at_least(("--window-batch", args.window_batch, 1), ("--eval-images", args.eval_images, 1))
    protocol = TestProtocol.for_layout(LAYOUTS[args.dataset], args.mode)
    if given(args, ("window_batch",)) and protocol.mode != "slide":
        raise OffsegError(f"--window-batch batches the windows of slide inference, and {args.dataset}'s test runs "
                          f"{protocol.mode} images: add --mode slide, or drop --window-batch")
    device = torch_device(args.device)
    dataset = SegmentationDataset(args.dataset, args.data_root, args.split)
    model, name = build_from_checkpoint(args.checkpoint, args.model)
    if dataset.num_classes != model.num_classes:
        raise OffsegError(f"{args.checkpoint} predicts {counted(model.num_classes, 'class')}, but "
                          f"{dataset.class_count()}")
    if args.cuda_graphs and device.type != "cuda":
        raise OffsegError(f"--cuda-graphs needs a CUDA device; this run is on {describe(device)}")
    check_carafe_form(args.carafe, device)
    extras = [text for wanted, text in ((args.cuda_graphs, "CUDA graphs"), (args.carafe != "taps",
                                                                            f"CARAFE {args.carafe}")) if wanted]
    print(f"evaluating {name} on {describe(device)}" + "".join(f", {text}" for text in extras), flush=True)
    with forced_form(args.carafe):
        scores = evaluate(model.to(device), dataset, protocol, args.eval_images, cuda_graphs=args.cuda_graphs,
                          window_batch=args.window_batch)
    images = min(args.eval_images or len(dataset), len(dataset))
    result = {"model": name, "dataset": args.dataset, "split": args.split, "images": images, "mode": protocol.mode,
              "device": str(device), "cuda_graphs": args.cuda_graphs, "carafe": args.carafe,
              "protocol": protocol.describe(), **scores.as_dict(dataset.classes), "mAcc": 100 * mean_accuracy(scores)}
    scored = counted(images, "image") + (f" of {len(dataset)}" if images < len(dataset) else "")
    print(f"{name} on {args.dataset} {args.split} ({scored}, {protocol.describe()}): mIoU {result['mIoU']:.2f}, "
          f"mAcc {result['mAcc']:.2f}, aAcc {result['aAcc']:.2f}")
    if dataset.out_of_range_pixels:
        print(f"{counted(dataset.out_of_range_pixels, 'pixel')} with labels above the class count were left out")
    for cls, iou in result["IoU"].items():
        print(f"  {cls:>20}: {'-' if iou is None else f'{iou:.2f}'}")
    if args.json:
        from runtime.sinks import write_file
        write_file(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-eval", description="mIoU / aAcc / per-class IoU of a checkpoint.")
    add_input(parser, "--checkpoint", required=True, help="official mmseg or offseg checkpoint")
    parser.add_argument("--model", choices=MODEL_NAMES, help="model name (default from the checkpoint)")
    parser.add_argument("--dataset", default="synthetic", choices=DATASET_NAMES, help="dataset layout")
    add_input(parser, "--data-root", type=str, help="dataset root folder (not needed for synthetic)")
    parser.add_argument("--split", default="val", help="dataset split")
    parser.add_argument("--mode", choices=("whole", "slide"), help="inference (default the dataset's test config; "
                        "the test pipeline's keep-ratio resize applies either way)")
    parser.add_argument("--eval-images", type=int, metavar="N", help="evaluate on the first N images (default all)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--window-batch", type=int, default=WINDOW_BATCH, metavar="N",
                        help=f"slide inference: run up to N of an image's windows as one batch (default "
                        f"{WINDOW_BATCH}; 1 runs them one by one, as mmseg, using the least memory)")
    parser.add_argument("--cuda-graphs", action="store_true", help="on a GPU, replay the forward of each input "
                        "size met twice from a CUDA graph (same scores, far less launch work; opt-in until "
                        "benchmarks/gpu.py has measured it)")
    parser.add_argument("--carafe", choices=CARAFE_FORMS, default="taps", help="CARAFE form: taps (default, the "
                        "reference), unfold (batched matrix products) or fused (one Triton kernel per CARAFE or "
                        "neighbour-similarity call, CUDA); all exact to 1e-4, the GPU forms opt-in until "
                        "benchmarks/gpu.py has measured them")
    add_output(parser, "--json", help="also write the scores as JSON")
    add_common_options(parser)
    add_hidden_aliases(parser, {"--max-images": "--eval-images"})
    return run(_eval, parser, argv)
