"""``offseg-run``: segment a video, camera, stream, image or folder with an ONNX model or a TensorRT engine."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

from .backends import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES
from .console import add_common_options, add_engine_host_code_option, add_hidden_aliases, given, run
from .errors import OffsegError
from .interrupts import exit_code, take
from .output_policy import add_input, add_output
from .preprocess import RESIZE_POLICIES
from .progress import Progress, counted

log = logging.getLogger(__name__)
ROS_NAMESPACE = "/offseg"
ROS_NAME = re.compile(r"(/?[A-Za-z_][A-Za-z0-9_]*)(/[A-Za-z_][A-Za-z0-9_]*)*|/?")  # a namespace; "" or "/": the root
MAX_CAMERAS = 256  # V4L2 video device numbers (/dev/videoN) stop at 255 (the Linux kernel's VIDEO_NUM_DEVICES)
BACKEND_OPTIONS = {  # option: the model suffixes it applies to, what they are
    "providers": ((".onnx",), "an .onnx model (ONNX Runtime)"),
    "cuda": (ENGINE_SUFFIXES, "a TensorRT engine (.plan)"),
    "device": (CHECKPOINT_SUFFIXES, "a .pth checkpoint (PyTorch)"),
}


def _check_arguments(args: argparse.Namespace):
    """Every argument, before the model is loaded: one sentence for the first problem (the paths were checked by
    ``output_policy`` before). Returns ``_video_writer``'s (description, sink class) for ``--output``, else None."""
    from .sinks import WindowSink

    if (args.engine is None) == (args.triton is None):
        raise OffsegError("give the model as --engine FILE (.onnx, .plan, .pth) or a server as --triton URL, "
                          "one of the two")
    if args.model_name is not None and args.triton is None:
        raise OffsegError("--model-name chooses a model of a --triton server; add --triton URL")
    if args.triton is not None:
        from .backends.triton_backend import parse_url
        parse_url(args.triton)
    _check_backend_options(args)
    _check_live_options(args)
    _check_drawing_options(args)
    if args.fps is not None and not args.fps > 0:
        raise OffsegError(f"--fps must be above 0, got {args.fps:g}")
    if not 0 <= args.alpha <= 1:
        raise OffsegError(f"--alpha must be between 0 and 1, got {args.alpha:g}")
    if args.camera is not None and not 0 <= args.camera < MAX_CAMERAS:
        raise OffsegError(f"--camera takes a camera index from 0 (the first camera) to {MAX_CAMERAS - 1}, got "
                          f"{args.camera}")
    if args.csi_camera is not None and not 0 <= args.csi_camera < MAX_CAMERAS:
        raise OffsegError(f"--csi-camera takes a sensor id from 0 to {MAX_CAMERAS - 1}, got {args.csi_camera}")
    if args.writer != "auto" and args.output is None:
        raise OffsegError(f"--writer {args.writer} chooses how --output is encoded; add --output VIDEO")
    if args.csi_mode is not None and args.csi_camera is None:
        raise OffsegError("--csi-mode sets the mode of a --csi-camera; add --csi-camera N")
    if _reads_gstreamer(args):
        from .gstreamer import load_gst, parse_csi_mode
        if args.image is not None or args.images is not None:
            raise OffsegError("--capture gstreamer reads --video, --stream or --camera; images are read by OpenCV")
        if args.csi_mode is not None:
            parse_csi_mode(args.csi_mode)
        load_gst()  # PyGObject and GStreamer present, before the model loads
    if args.show:
        WindowSink.check_gui()
    _check_input_kind(args)
    _check_recursive(args)
    writer = _video_writer(args) if args.output else None
    if given(args, ("ros_namespace",)) and not args.rosbag_out:
        raise OffsegError("--ros-namespace names the topics of a --rosbag-out bag; add --rosbag-out BAG")
    if args.rosbag_out:
        if args.rosbag is None:
            raise OffsegError("--rosbag-out needs a --rosbag input (its messages give the headers)")
        if not ROS_NAME.fullmatch(args.ros_namespace.rstrip("/")):
            raise OffsegError(f"--ros-namespace {args.ros_namespace!r} is not a ROS 2 name: parts of letters, digits "
                              "and _ (not starting with a digit) joined by /, e.g. /offseg or /robot1/offseg")
        from .rosbag_io import RosbagSink
        RosbagSink.check_target(args.rosbag_out)
    return writer


def _check_backend_options(args: argparse.Namespace) -> None:
    """An option of one backend given for a model another backend runs (or a Triton server runs itself)."""
    for dest, (suffixes, kind) in BACKEND_OPTIONS.items():
        for flag in given(args, (dest,)):
            if args.triton is not None:
                raise OffsegError(f"{flag} applies to {kind} run here; a --triton server chooses how it runs its "
                                  f"models: remove {flag}")
            if args.engine.suffix.lower() not in suffixes:
                raise OffsegError(f"{flag} applies to {kind}, not to {args.engine.name}: remove {flag}")


def _check_live_options(args: argparse.Namespace) -> None:
    """--reconnects and --stall-timeout: in range, and only for an input that can drop."""
    from .sources import check_live_settings

    check_live_settings(args.reconnects, args.stall_timeout)
    live = any(value is not None for value in (args.camera, args.stream, args.gst, args.csi_camera))
    for flag in given(args, ("reconnects", "stall_timeout")):
        if not live:
            raise OffsegError(f"{flag} applies to a camera or stream (--camera, --stream, --gst, --csi-camera), "
                              f"which can drop; a file, folder or bag cannot: remove {flag}")


def _check_drawing_options(args: argparse.Namespace) -> None:
    """Options of the annotated frames, given for a run that writes or shows none."""
    drawn = bool(args.output or args.show or args.save_overlays)
    frames = "the --output video, --save-overlays pictures and --show window"
    add = "--output VIDEO, --save-overlays DIR or --show"
    uses = {  # option: (does this run use it, what it changes, what to add)
        "legend": (drawn, frames, add),
        "no_overlay_text": (drawn, frames, add),
        "alpha": (drawn or bool(args.rosbag_out), f"{frames} and the --rosbag-out overlays", add),
        "fps": (bool(args.output), "the --output video", "--output VIDEO")}
    for dest, (used, where, needed) in uses.items():
        if used:
            continue
        for flag in given(args, (dest,)):
            raise OffsegError(f"{flag} only changes {where}, and this run writes or shows none: drop {flag}, or add "
                              f"{needed}")


def _reads_gstreamer(args: argparse.Namespace) -> bool:
    return args.gst is not None or args.csi_camera is not None or args.capture == "gstreamer"


def _writes_gstreamer(args: argparse.Namespace) -> bool:
    """--writer gstreamer, or auto in a run that reads through GStreamer on a machine with the hardware encoder
    (GStreamer is not started only to look for it: a process that has started it cannot export ONNX afterwards)."""
    if args.writer != "auto":
        return args.writer == "gstreamer"
    if not _reads_gstreamer(args):
        return False
    from .gst_video_sink import hardware_encoder_present
    return hardware_encoder_present()


def _video_writer(args: argparse.Namespace) -> tuple[str, type]:
    """How --output is written, its target checked: (what the start-up line says, the sink class)."""
    if _writes_gstreamer(args):
        from .gst_video_sink import GstVideoSink, check_target
        return f"GStreamer, {check_target(args.output, args.fps)}", GstVideoSink
    from .sinks import VideoSink
    return f"OpenCV ({VideoSink.check_target(args.output, args.fps)})", VideoSink


def _check_input_kind(args: argparse.Namespace) -> None:
    """A folder given as a video or image, or a file given as a folder: name the option that fits."""
    from .sources import IMAGE_SUFFIXES

    if args.video is not None and args.video.is_dir():
        raise OffsegError(f"--video {args.video} is a folder; for a folder of images use --images {args.video}")
    still = set(IMAGE_SUFFIXES) - {".gif"}  # an animated GIF is a video to OpenCV
    if args.video is not None and args.video.is_file() and args.video.suffix.lower() in still:
        raise OffsegError(f"--video {args.video} is an image; use --image {args.video}")
    if args.image is not None and args.image.is_dir():
        raise OffsegError(f"--image {args.image} is a folder; for a folder of images use --images {args.image}")
    if args.images is not None and args.images.is_file():
        option = "--image" if args.images.suffix.lower() in IMAGE_SUFFIXES else "--video"
        raise OffsegError(f"--images {args.images} is a file, not a folder; use {option} {args.images}")


def _check_recursive(args: argparse.Namespace) -> None:
    """--recursive only with --images, and then no folder output inside the input tree or holding it: the masks
    and overlays mirror its subfolders, so a later run would read them as images, or they could land on one."""
    if not args.recursive:
        return
    if args.images is None:
        raise OffsegError("--recursive reads the subfolders of an --images folder; give --images FOLDER")
    tree = args.images.resolve()
    for option, folder in (("--save-masks", args.save_masks), ("--save-overlays", args.save_overlays)):
        if folder is None:
            continue
        resolved = folder.resolve()
        if resolved == tree or tree in resolved.parents or resolved in tree.parents:
            where = "around" if resolved in tree.parents else "inside"
            raise OffsegError(f"{option} {folder} is {where} the --images {args.images} tree read with --recursive: "
                              "its files would mix with the images; choose a folder outside it")


def _note_unread_subfolders(folder) -> None:
    """A note when an --images folder's subfolders hold images that this run, without --recursive, leaves out."""
    from .sources import shown_subfolders, subfolders_with_images

    holding = subfolders_with_images(folder)
    if holding:
        print(f"note: reading only the images directly in {folder}; its subfolder{'s' if len(holding) > 1 else ''} "
              f"{shown_subfolders(holding)} hold{'' if len(holding) > 1 else 's'} images too: add --recursive to "
              "read them", file=sys.stderr, flush=True)


def _open_source(args: argparse.Namespace):
    if args.rosbag is not None:
        from .rosbag_io import RosbagSource
        return RosbagSource(args.rosbag, args.image_topic)
    if args.image_topic is not None:
        raise OffsegError("--image-topic chooses a topic of a --rosbag input; give --rosbag too")
    if _reads_gstreamer(args):
        from .gstreamer import gstreamer_source
        return gstreamer_source(args.gst, args.csi_camera, args.csi_mode, args.video, args.stream, args.camera,
                                args.reconnects, args.stall_timeout)
    from .sources import open_source
    return open_source(args.video, args.camera, args.stream, args.image, args.images, args.reconnects,
                       args.stall_timeout, args.recursive)


def _saves_nothing(args: argparse.Namespace) -> bool:
    """No video, masks, overlays, bag, summary or window: the run only measures speed."""
    return not (args.output or args.save_masks or args.save_overlays or args.summary or args.show or args.rosbag_out)


NOTHING_SAVED = ("saves nothing: give --output, --save-masks, --save-overlays, --rosbag-out or --summary to keep the "
                 "results")


def _open_model(args: argparse.Namespace):
    if args.triton is not None:
        from .backends.triton_backend import TritonBackend
        return TritonBackend(args.triton, args.model_name)
    from .backends import open_backend
    return open_backend(args.engine, args.providers.split(",") if args.providers else None, args.cuda, args.device,
                        allow_engine_host_code=args.allow_engine_host_code)


def _write_summary(path: Path, stats, failure: OffsegError | None) -> None:
    """Write the run's summary; after a failed run, one that cannot be written (the same full disk) is only noted,
    and the run's own error follows."""
    from .sinks import write_file
    try:
        write_file(path, json.dumps(stats.summary(), indent=2) + "\n")
    except OffsegError as error:
        if failure is None:
            raise
        print(f"warning: no summary either: {error}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from .draw import annotate, class_names, palette_for
    from .pipeline import Pipeline, RunStats
    from .sinks import MaskSink, OverlaySink, WindowSink

    writer = _check_arguments(args)
    backend = _open_model(args)
    source = _open_source(args)
    pipeline = Pipeline(backend, args.batch_size, args.resize)
    info = backend.info
    palette = palette_for(info)
    names = class_names(info) if args.legend else None
    print(f"{info.name} ({info.num_classes} classes, {info.precision}, input "
          f"{'any size' if info.input_size is None else '%dx%d' % info.input_size}) on {backend.description}; "
          f"reading {source.description}")
    if writer:
        print(f"writing {args.output.name} with {writer[0]}")
    if args.images is not None and not args.recursive:
        _note_unread_subfolders(args.images)
    if _saves_nothing(args):
        print(f"note: this run only prints the timing table and {NOTHING_SAVED}", file=sys.stderr, flush=True)
    if not info.trained:
        model = args.engine.name if args.engine else f"Triton model {info.name}"
        print(f"WARNING: {model} was exported without a checkpoint: its weights are RANDOM and its labels are noise "
              "(for speed tests only)", file=sys.stderr, flush=True)
    masks = MaskSink(args.save_masks) if args.save_masks else None
    overlays = OverlaySink(args.save_overlays) if args.save_overlays else None
    window = WindowSink() if args.show else None
    video = None
    bag = None
    stats = RunStats()
    bar = Progress(source.length, "segmenting", unit="frame", enabled=not args.no_progress)
    recent: list[float] = []

    def consume(result) -> bool:
        nonlocal video, bag
        if masks:
            masks.write(result.frame.name, result.labels)
        if args.rosbag_out:
            if bag is None:
                from .rosbag_io import RosbagSink
                bag = RosbagSink(args.rosbag_out, source.storage, info, args.ros_namespace, args.alpha)
            bag.write(result)
        if not (args.output or window or overlays):
            bar.update(1)
            return True
        now = time.perf_counter()
        recent.append(now)
        del recent[:-30]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
        timing = f"{fps:.1f} FPS  model {result.compute_ms:.0f} ms" if fps else f"model {result.compute_ms:.0f} ms"
        image = annotate(result.frame.image, result.labels, palette, args.alpha,
                         None if args.no_overlay_text else timing, names)
        if overlays:
            overlays.write(result.frame.name, image)
        if args.output:
            if video is None:
                video = writer[1](args.output, args.fps or source.fps or 30.0, image.shape[:2])
            video.write(image)
        bar.update(1, fps=f"{fps:.1f}")
        return window.show(image) if window else True

    interrupted = failure = None
    unfinished = []
    try:
        pipeline.run(source, consume, stats)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: later ones are ignored while the outputs finish
        interrupted = interrupt
        take(interrupt)
        print(f"{stats.stop_reason}: finishing the outputs", flush=True)
    except OffsegError as error:  # a full disk, a failing model: what was done is still finished and reported
        failure = error
    finally:
        bar.close()  # the source is closed by the pipeline's reader
        backend.close()
        for output in (video, bag, window):
            try:
                if output:
                    output.close()
            except OffsegError as error:  # e.g. a video the full disk cut short: removed, the previous one kept
                failure = failure or error
                unfinished.append(output)
    if failure is not None:
        stats.error, stats.stop_reason = str(failure), "an error (below)"
    print(stats.table())
    if video and video not in unfinished:
        print(f"wrote {video.path} ({counted(video.frames, 'frame')})")
    if masks:
        print(f"wrote {counted(masks.written, 'label PNG')} to {masks.folder}")
    if overlays:
        print(f"wrote {counted(overlays.written, 'annotated JPEG')} to {overlays.folder}")
    if bag and bag not in unfinished:
        print(f"wrote {bag.path} ({counted(bag.frames, 'frame')}, {source.storage})")
    if args.summary:
        _write_summary(args.summary, stats, failure)
    if failure is not None:
        raise failure
    if _saves_nothing(args):
        print(f"this run {NOTHING_SAVED}")
    if interrupted is not None:
        return exit_code(interrupted)
    if stats.frames == 0:
        raise OffsegError(f"no frame could be processed ({stats.stop_reason})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offseg-run", description="Semantic segmentation of videos, cameras, "
                                     "streams and images with an OffSeg ONNX model or TensorRT engine.")
    add_input(parser, "--engine", help="model: .onnx (ONNX Runtime), .plan or .engine (TensorRT) or .pth (PyTorch, "
              "needs torch); or --triton")
    parser.add_argument("--triton", metavar="URL", help="run the model on a Triton Inference Server instead: "
                        "http://HOST:8000 or grpc://HOST:8001 (a repository from offseg-export --format triton; "
                        "needs the [triton] extra)")
    parser.add_argument("--model-name", help="the --triton server's model (default its only one)")
    inputs = parser.add_mutually_exclusive_group(required=True)
    add_input(inputs, "--video", help="video file")
    inputs.add_argument("--camera", type=int, help="camera index (0 = first)")
    inputs.add_argument("--stream", help="RTSP/HTTP stream URL")
    inputs.add_argument("--gst", metavar="PIPELINE", help="a GStreamer pipeline ending in an appsink, read "
                        "through PyGObject (caps narrowed to BGR), e.g. \"videotestsrc ! videoconvert ! appsink\"")
    inputs.add_argument("--csi-camera", type=int, metavar="N", help="Jetson CSI camera with sensor id N "
                        "(GStreamer nvarguscamerasrc, converted by nvvidconv)")
    add_input(inputs, "--image", help="one image")
    add_input(inputs, "--images", metavar="DIR", help="a folder of images (with --recursive, its subfolders' too)")
    add_input(inputs, "--rosbag", help="a rosbag2 (sqlite3 or mcap) with sensor_msgs/Image or "
                        "CompressedImage messages (needs the [ros] extra)")
    parser.add_argument("--recursive", action="store_true", help="--images: read the folder's subfolders too "
                        "(links to folders followed); --save-masks and --save-overlays mirror them")
    parser.add_argument("--csi-mode", metavar="WxH@FPS", help="--csi-camera capture mode, e.g. 1920x1080@30 "
                        "(default the camera's own)")
    parser.add_argument("--capture", choices=("opencv", "gstreamer"), default="opencv",
                        help="how --video, --stream and --camera are read: opencv, or gstreamer (hardware decode "
                        "with nvv4l2decoder where it exists, software otherwise; v4l2src for cameras)")
    add_output(parser, "--output", help="annotated video (.mp4/.m4v/.mov/.mkv/.avi), same fps as the input")
    parser.add_argument("--writer", choices=("auto", "opencv", "gstreamer"), default="auto",
                        help="how --output is encoded: opencv (mp4v/MJPG), or gstreamer (H.264 by nvv4l2h264enc "
                        "where it exists, x264enc otherwise); auto (default) is gstreamer when the input is read "
                        "through GStreamer on a machine with the hardware encoder, opencv otherwise")
    add_output(parser, "--rosbag-out", folder=True, replaced=True, metavar="BAG", help="write a rosbag2 (the "
               "input's storage) of what offseg-ros2 publishes: label images, overlays and LabelInfo, at the input's "
               "times")
    parser.add_argument("--image-topic", help="image topic of --rosbag (default the bag's only image topic)")
    parser.add_argument("--ros-namespace", default=ROS_NAMESPACE, help="namespace of the --rosbag-out topics "
                        "segmentation, overlay and label_info")
    add_output(parser, "--save-masks", folder=True, names=("*.png",), metavar="DIR",
               help="write one label PNG per frame")
    add_output(parser, "--save-overlays", folder=True, names=("*.jpg",), metavar="DIR",
               help="write one annotated JPEG per frame (the --output video's pictures), named like --save-masks")
    parser.add_argument("--show", action="store_true", help="show a window ('q' to stop)")
    parser.add_argument("--no-display", action="store_true", help=argparse.SUPPRESS)  # the default; old scripts
    parser.add_argument("--batch-size", type=int, default=1, help="frames per inference (models with a dynamic "
                        "batch)")
    parser.add_argument("--resize", choices=RESIZE_POLICIES, default="letterbox",
                        help="fitting frames to a fixed-size model (default letterbox: keeps the aspect ratio)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    parser.add_argument("--legend", action="store_true", help="draw the classes present in each frame")
    parser.add_argument("--no-overlay-text", action="store_true", help="no FPS/latency text on the frames")
    parser.add_argument("--fps", type=float, help="output fps when the input does not say (default 30)")
    parser.add_argument("--providers", help="ONNX Runtime providers, comma-separated, by name or short name "
                        "(cuda,cpu) (default TensorRT, CUDA, CPU, whichever exist)")
    parser.add_argument("--cuda", choices=("auto", "cuda-python", "pycuda"), default="auto",
                        help="CUDA binding for TensorRT engines (default auto: cuda-python, else pycuda)")
    parser.add_argument("--device", default="auto", help="torch device of a .pth model: auto (the GPU when torch "
                        "sees one), cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--reconnects", type=int, default=5, help="reconnects of a camera/stream allowed "
                        "within any 60 s (default 5); more stalls than that end the run")
    parser.add_argument("--stall-timeout", type=float, default=5.0, metavar="SECONDS", help="a camera or "
                        "stream that delivers no frame for this long counts as a drop")
    add_output(parser, "--summary", help="write the run summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (or, in a log, no progress "
                        "lines)")
    add_engine_host_code_option(parser)
    add_common_options(parser)
    add_hidden_aliases(parser, {"--batch": "--batch-size"})
    return run(_run, parser, argv)
