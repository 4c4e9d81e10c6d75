"""``offseg-calibrate`` (INT8 Q/DQ with an optional sensitivity sweep), ``offseg-fp16-check`` (which modules need
FP32) and ``offseg-validate`` (mIoU parity)."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path


from runtime.console import add_common_options, add_engine_host_code_option, add_hidden_aliases, run
from runtime.errors import OffsegError
from runtime.limits import check_at_least, check_input_size
from runtime.output_policy import add_input, add_output
from runtime.progress import counted

VALIDATION_FILES = ("report.json", "report.md", "sample_*.png")  # what offseg-validate writes in --report
FP16_FILES = ("fp16_safety.json", "fp16_safety.md")  # what offseg-fp16-check writes in --report

def _calibrate(args: argparse.Namespace) -> int:
    import onnx

    from runtime.sinks import write_file

    from .files import check_onnx_name, load_onnx, model_info, read_metadata
    from .precision import DEFAULT_PINS, check_user_rules
    from .quantize import QuantOptions, input_size_for_calibration, quantize_file
    from .sensitivity import sweep, worst_layers
    from .sources import calibration_inputs, data_key
    from .trt_support import unsupported

    check_onnx_name(args.output, "Q/DQ ONNX file")
    check_at_least(("--calib-images", args.calib_images, 1), ("--sensitivity-images", args.sensitivity_images, 1),
                   ("--group-depth", args.group_depth, 1), ("--exclude-worst", args.exclude_worst, 0))
    if (args.exclude_worst or args.sensitivity_json or args.sensitivity_data) and not args.sensitivity:
        raise OffsegError("--exclude-worst, --sensitivity-json and --sensitivity-data need --sensitivity")
    if args.sensitivity_data not in (None, "synthetic") and not Path(args.sensitivity_data).exists():
        raise OffsegError(f"--sensitivity-data {args.sensitivity_data} does not exist (a folder of images, a video, "
                          "or synthetic)")
    data_key(args.calib_data, args.calib_images)  # a missing, empty or unreadable source fails now, not in minutes
    model = load_onnx(args.onnx)
    exclude = (() if args.no_default_pins else DEFAULT_PINS) + check_user_rules(model, args.keep_fp32, str(args.onnx))
    options = QuantOptions(target=args.target, method=args.method, samples=args.calib_images,
                           per_channel=not args.per_tensor, exclude=exclude, cache=args.cache)
    options.validate()
    if args.sensitivity:
        meta, info = read_metadata(model), model_info(model, args.onnx)
        val = calibration_inputs(args.sensitivity_data or args.calib_data, args.sensitivity_images,
                                 input_size_for_calibration(meta, model), info.input_format, info.input_layout)
        results = sweep(args.onnx, args.calib_data, val, options, args.group_depth, progress=not args.debug)
        print(f"INT8 sensitivity ({counted(len(val), 'image')}; mIoU of the labels vs FP32 with only that group in "
              "INT8):")
        for item in results:
            convs = "convs" if item.layers != 1 else "conv "
            print(f"  {item.group:<28} {item.layers:3d} {convs}  mIoU {item.miou:6.2f}  cost {item.cost:5.2f}")
        if args.exclude_worst:
            options = replace(options, extra_exclude_nodes=worst_layers(results, model, args.exclude_worst,
                                                                                 args.group_depth))
            print(f"keeping the {args.exclude_worst} most costly groups in float: "
                  + ", ".join(s.group for s in results[:args.exclude_worst]))
        if args.sensitivity_json:
            write_file(args.sensitivity_json, json.dumps([s.__dict__ for s in results], indent=2) + "\n")
    result = quantize_file(args.onnx, args.output, args.calib_data, options)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB): {options.target} Q/DQ, {result}")
    problems = unsupported(onnx.load(str(args.output)))
    print("  TensorRT 10 ONNX parser: " + ("all ops supported" if not problems else "; ".join(problems[:3])))
    return 0


def calibrate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-calibrate", description="INT8 (Q/DQ) quantization of an "
                                     "offseg-exported ONNX model on calibration images.")
    add_input(parser, "--onnx", required=True, help="FP32 ONNX from offseg-export")
    add_input(parser, "--calib-data", type=str, required=True,
              help="calibration images: folder, video file or 'synthetic'")
    add_output(parser, "--output", required=True, help="Q/DQ ONNX to write")
    parser.add_argument("--target", choices=("onnxruntime", "tensorrt"), default="tensorrt",
                        help="tensorrt (symmetric, float biases; NVIDIA's parser takes it) or onnxruntime "
                             "(ORT's fastest CPU form)")
    parser.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                        help="how activation ranges are taken from the calibration images")
    parser.add_argument("--calib-images", type=int, default=64, help="calibration images (default 64)")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    parser.add_argument("--keep-fp32", action="append", default=[], metavar="PREFIX[:Op,Op]",
                        help="also keep these nodes out of INT8 (repeatable)")
    parser.add_argument("--no-default-pins", action="store_true",
                        help="quantize the offset-learning head and FreqFusion normalisation too")
    add_output(parser, "--cache", help="calibration ranges file: reused when present, else written")
    parser.add_argument("--sensitivity", action="store_true", help="rank layer groups by the mIoU INT8 costs")
    add_input(parser, "--sensitivity-data", type=str, help="validation images for the sweep (default --calib-data)")
    parser.add_argument("--sensitivity-images", type=int, default=8, help="images the sweep scores each group on")
    parser.add_argument("--group-depth", type=int, default=3, help="module-name parts per group (default 3: "
                        "backbone.stages.2; 2: backbone.stages, faster)")
    add_output(parser, "--sensitivity-json", help="write the ranking as JSON")
    parser.add_argument("--exclude-worst", type=int, default=0, metavar="N",
                        help="keep the N most costly groups in float (with --sensitivity)")
    add_common_options(parser)
    add_hidden_aliases(parser, {"--data": "--calib-data", "--samples": "--calib-images", "--keep-float": "--keep-fp32",
                                "--no-default-exclusions": "--no-default-pins"})
    return run(_calibrate, parser, argv)


def _validate(args: argparse.Namespace) -> int:
    from offseg.checkpoint import build_from_checkpoint
    from offseg.data.datasets import LAYOUTS, SegmentationDataset
    from offseg.devices import describe, torch_device
    from offseg.inference import torch_infer
    from offseg.models.fold import fold_batchnorm
    from offseg.protocol import TestProtocol
    from runtime.backends import open_backend

    from .report import report_content, write_report
    from .validate import at_input_size, compare, engine_infer

    if args.max_miou_drop is not None and not 0 <= args.max_miou_drop < math.inf:
        raise OffsegError(f"--max-miou-drop must be a number of at least 0, got {args.max_miou_drop}")
    if args.eval_images is not None and args.eval_images < 1:
        raise OffsegError(f"--eval-images must be at least 1, got {args.eval_images}: a gate must measure something")
    if args.deepstream is not None and args.mode is not None:
        raise OffsegError("--mode applies to --engine: --deepstream feeds each image to nvinfer as a frame")
    device = torch_device(args.device)
    if args.deepstream is not None:
        from .nvinfer import NvinferEmulation
        backend = NvinferEmulation(args.deepstream)
        artifact = backend.config.path
    else:
        backend = open_backend(args.engine, allow_engine_host_code=args.allow_engine_host_code)
        artifact = args.engine
    info = backend.info
    model, name = build_from_checkpoint(args.checkpoint, args.model)
    model = fold_batchnorm(model).to(device)  # the folded model offseg-eval runs
    if info.num_classes != model.num_classes:
        raise OffsegError(f"{artifact} predicts {info.num_classes} classes, the checkpoint {model.num_classes}")
    dataset = SegmentationDataset(args.dataset, args.data_root, args.split, length=args.eval_images or 50)
    if dataset.num_classes != model.num_classes:
        raise OffsegError(f"{args.checkpoint} predicts {counted(model.num_classes, 'class')}, but "
                          f"{dataset.class_count()}")
    print(f"PyTorch reference on {describe(device)}; engine: {backend.description}", flush=True)
    if args.deepstream is not None:
        how, result = "frames through nvinfer, masks mapped back", _nvinfer_comparison(args, model, backend, dataset)
    else:
        protocol = TestProtocol.for_layout(LAYOUTS[args.dataset], args.mode)
        how, labels_only = protocol.describe(), info.output_kind != "logits"  # labels, or probabilities: on labels
        engine = engine_infer(backend.infer, info, protocol)
        reference = at_input_size(torch_infer(model), info.input_size, protocol)
        result = compare(dataset, reference, engine, protocol, labels_only, args.eval_images,
                         progress=not args.debug)
    bound = args.max_miou_drop if args.max_miou_drop is not None else (1.0 if "int8" in info.precision else 0.1)
    report = report_content(result, dataset.classes, engine=str(artifact), precision=info.precision, model=name,
                            dataset=args.dataset, bound=bound, backend=backend.description)
    summary = report["summary"]
    print(f"{name} on {args.dataset} {args.split} ({counted(result.images, 'image')}, {how}"
          f"{', labels compared' if result.labels_only else ''}): PyTorch mIoU {summary['reference_miou']:.2f}, "
          f"{artifact.name} ({info.precision}) {summary['engine_miou']:.2f}, delta {summary['miou_delta']:+.2f}, "
          f"pixel agreement {summary['pixel_agreement']:.3f}%"
          + (f", max |logit diff| {summary['max_logit_diff']:.2e}" if not result.labels_only else ""))
    write_report(args.report, report, result, dataset.classes, palette_source=info)  # after the result is shown
    print(f"wrote {args.report / 'report.md'} and report.json")
    if result.engine.missed.any():
        print(f"{int(result.engine.missed.sum())} labelled pixels got no class (nvinfer's -1: no score above "
              "segmentation-threshold), counted as wrong")
    if dataset.out_of_range_pixels:
        print(f"{counted(dataset.out_of_range_pixels, 'pixel')} with labels above the class count were left out")
    if not math.isfinite(summary["miou_delta"]) or -summary["miou_delta"] > bound:  # NaN is never within bound
        print(f"FAIL: the mIoU drop {-summary['miou_delta']:.2f} exceeds --max-miou-drop {bound}")
        return 1
    return 0


def _nvinfer_comparison(args: argparse.Namespace, model, emulation, dataset):
    """Each image fed to the emulated nvinfer as a frame, its mask mapped back onto it; PyTorch through offseg-run's
    preprocessing at the same mask size (``calibration.nvinfer.reference_labeller``)."""
    from offseg.inference import torch_infer

    from .nvinfer import reference_labeller
    from .validate import compare_sides

    reference = reference_labeller(torch_infer(model), emulation)
    sides = {"reference": lambda image: (reference(image), None),
             "engine": lambda image: (emulation.labels(image), None)}
    return compare_sides(dataset, sides, "nvinfer", True, args.eval_images, progress=not args.debug)


def validate_main(argv: list[str] | None = None) -> int:
    from offseg.names import DATASET_NAMES, DEVICE_HELP, MODEL_NAMES
    parser = argparse.ArgumentParser(prog="offseg-validate", description="mIoU parity of an ONNX model or TensorRT "
                                     "engine against its PyTorch checkpoint, with the paper's test protocol.")
    artifact = parser.add_mutually_exclusive_group(required=True)
    add_input(artifact, "--engine", help=".onnx or .plan")
    add_input(artifact, "--deepstream", metavar="DIR", help="a DeepStream package (offseg-export --format "
              "deepstream): its config's preprocessing and segmentation parser emulated in numpy, its onnx-file run "
              "by ONNX Runtime, each image fed as a frame")
    add_input(parser, "--checkpoint", required=True, help="the PyTorch checkpoint it came from")
    parser.add_argument("--model", choices=MODEL_NAMES, help="model name (default from the checkpoint)")
    parser.add_argument("--dataset", default="synthetic", choices=DATASET_NAMES, help="dataset layout")
    add_input(parser, "--data-root", type=str, help="dataset root folder (not needed for synthetic)")
    parser.add_argument("--split", default="val", help="dataset split")
    parser.add_argument("--mode", choices=("whole", "slide"),
                        help="inference (default the dataset's official test mode)")
    parser.add_argument("--eval-images", type=int, metavar="N", help="validate on the first N images (default all; "
                        "50 of the synthetic dataset)")
    parser.add_argument("--max-miou-drop", type=float, help="fail above this drop (default 0.1; 1.0 for INT8)")
    parser.add_argument("--device", default="auto", help="the PyTorch side's " + DEVICE_HELP)
    add_output(parser, "--report", folder=True, names=VALIDATION_FILES, default=Path("validation"),
               help="report folder")
    add_engine_host_code_option(parser)
    add_common_options(parser)
    add_hidden_aliases(parser, {"--max-images": "--eval-images"})
    return run(_validate, parser, argv)


def _fp16_check(args: argparse.Namespace) -> int:
    from offseg.checkpoint import build_from_checkpoint
    from offseg.names import freqfusion_form_for
    from runtime.sinks import write_file

    from .fp16_safety import DEFAULT_TOLERANCE, check_fp16, describe_whole, markdown
    from .sources import calibration_inputs

    check_at_least(("--calib-images", args.calib_images, 1))
    if args.tolerance is not None and not 0 < args.tolerance < math.inf:
        raise OffsegError(f"--tolerance must be a relative error above 0, e.g. 0.001, got {args.tolerance:g}")
    height, width = args.input_size
    check_input_size(height, width)
    model, name = build_from_checkpoint(args.checkpoint, args.model)
    inputs = calibration_inputs(args.calib_data, args.calib_images, (height, width))
    form = freqfusion_form_for(args.freqfusion_form, "engine")  # auto: what engines get
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    report = check_fp16(model, inputs, tolerance, progress=not args.debug, freqfusion_form=form)
    print(f"{name} (FreqFusion {form} form): {report.modules_checked} modules checked on "
          f"{counted(report.images, 'image')} at {height}x{width}; "
          f"{len(report.flagged)} need FP32 (tolerance {report.tolerance:.2g})")
    for stats in report.flagged:
        print(f"  {stats.module} ({stats.kind}): {stats.reason}")
    print(f"whole model in FP16: {describe_whole(report.whole_fp16)}; with the default pins: "
          f"{describe_whole(report.whole_fp16_default)}; with those in FP32 too: "
          f"{describe_whole(report.whole_fp16_pinned)}")
    if report.pins:
        print("build with: offseg-export ... --fp16 " + " ".join(f"--keep-fp32 '{rule}'" for rule in report.pins))
    for file, text in (("fp16_safety.json", json.dumps(report.to_json(), indent=2)),  # after the result is shown
                       ("fp16_safety.md", markdown(report, name))):
        write_file(args.report / file, text)
    print(f"wrote {args.report / 'fp16_safety.md'} and fp16_safety.json")
    return 0


def fp16_check_main(argv: list[str] | None = None) -> int:
    from offseg.names import FREQFUSION_CHOICES, MODEL_NAMES
    parser = argparse.ArgumentParser(prog="offseg-fp16-check", description="Run each module of a checkpoint in "
                                     "FP16 on CPU, report overflow and precision loss, and list the FP32 pins.")
    add_input(parser, "--checkpoint", required=True, help="the PyTorch checkpoint to check")
    parser.add_argument("--model", choices=MODEL_NAMES, help="model name (default from the checkpoint)")
    add_input(parser, "--calib-data", type=str, default="synthetic", help="images: folder, video file or 'synthetic' "
                        "(default)")
    parser.add_argument("--calib-images", type=int, default=4, help="images to check (default 4)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                        help="input size, multiples of 32")
    parser.add_argument("--tolerance", type=float, help="relative error that flags a module (default FP16's "
                        "machine epsilon, 2^-10)")
    parser.add_argument("--freqfusion-form", choices=FREQFUSION_CHOICES, default="auto",
                        help="FreqFusion form to check, as offseg-export writes it (default auto: taps, what "
                        "TensorRT engines get; gather for an FP16 ONNX file of the default ONNX export)")
    add_output(parser, "--report", folder=True, names=FP16_FILES, default=Path("fp16-safety"), help="report folder")
    add_common_options(parser)
    add_hidden_aliases(parser, {"--data": "--calib-data", "--images": "--calib-images"})
    return run(_fp16_check, parser, argv)
