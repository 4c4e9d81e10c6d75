"""Shared command-line plumbing: logging set-up and turning user mistakes into one clear line."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Callable

from .errors import OffsegError
from .interrupts import describe, exit_code, raise_pending, stop_signals
from .output_policy import OUTPUT, ROLE, Output, check_paths, declared_paths


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks, debug logs and library warnings")


def add_engine_host_code_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-engine-host-code``, for every command that opens TensorRT engines."""
    parser.add_argument("--allow-engine-host-code", action="store_true",
                        help="run a version-compatible TensorRT engine: it carries its own lean TensorRT runtime, "
                        "code from the .plan file that runs in this process; only for engines you built or trust")


def add_hidden_aliases(parser: argparse.ArgumentParser, aliases: dict[str, str]) -> None:
    """Accept each old option name (key) for its current one (value) without listing it in ``--help``."""
    actions = {option: action for action in parser._actions for option in action.option_strings}
    for old, new in aliases.items():
        action = actions[new]
        kwargs = {} if action.nargs == 0 else {"type": action.type, "nargs": action.nargs, "choices": action.choices,
                                                "metavar": action.metavar}
        alias = parser.add_argument(old, action=type(action), dest=action.dest, default=argparse.SUPPRESS,
                                    help=argparse.SUPPRESS, **kwargs)
        for mark in (ROLE, OUTPUT):  # an old name of a path option is checked as the option is
            if hasattr(action, mark):
                setattr(alias, mark, getattr(action, mark))


OPTION_DEFAULTS = "option_defaults"  # the namespace attribute ``run`` records each option's flag and default in


def _record_defaults(parser: argparse.ArgumentParser) -> None:
    """Keep each option's longest flag and default in the parsed namespace, for ``given``."""
    options = {}
    for action in parser._actions:
        if action.option_strings and action.default is not argparse.SUPPRESS and action.dest not in options:
            options[action.dest] = (max(action.option_strings, key=len), action.default)
    parser.set_defaults(**{OPTION_DEFAULTS: options})


def given(args: argparse.Namespace, dests: tuple[str, ...]) -> list[str]:
    """The flags of the options ``dests`` that the command line set to something other than their default (a
    parser run by ``run``)."""
    def plain(value):
        return tuple(value) if isinstance(value, list) else value
    options = getattr(args, OPTION_DEFAULTS)
    return [options[dest][0] for dest in dests if plain(getattr(args, dest)) != plain(options[dest][1])]


def _document_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default X)`` to every option help that does not state its default already."""
    for action in parser._actions:
        default = action.default
        if action.help in (None, argparse.SUPPRESS) or "default" in action.help:
            continue
        if default is None or default is False or default is argparse.SUPPRESS or default in ([], ()):
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        action.help += f" (default {shown})"


# Third-party notices that say nothing to our users (shown with --debug): (category, message regex).
# Libraries that log progress or notices through handlers of their own (torch's), which the filter below cannot
# reach: without --debug they show errors only.
LIBRARY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._export", "torch.export", "modelopt",
                   "onnxruntime")
TORCH_QUIET_LOGS = "-onnx,-export"  # torch's TORCH_LOGS syntax: "-name" = errors only
KNOWN_NOISE = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)
OUR_PACKAGES = ("offseg", "export", "runtime", "calibration", "chain")


def _quiet_opencv() -> None:
    """OpenCV's warnings and errors ("[ WARN:0@0.2] global cap_v4l.cpp ...", "[ERROR:0@0.1] ... Failed to initialize
    VideoWriter") and FFmpeg's notices through it ("[tcp @ 0x..] Connection refused"): a failed capture or writer is
    our one sentence. OpenCV reads its level when imported, FFmpeg's level at the first capture. Levels the user set
    in the environment stay."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" not in os.environ:
        os.environ["OPENCV_LOG_LEVEL"] = "SILENT"
        if "cv2" in sys.modules:
            cv2 = sys.modules["cv2"]
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _ours_or_errors(record: logging.LogRecord) -> bool:
    """Without --debug, show our own progress logs and only errors from the libraries we call."""
    return record.name.split(".")[0] in OUR_PACKAGES or record.levelno >= logging.ERROR


def run(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None,
        outputs: Callable[[argparse.Namespace], list[Output]] | None = None) -> int:
    """Parse ``argv``, check the paths (``output_policy``), call ``main``; an OffsegError prints
    ``error: <message>`` and returns 2 (unless --debug).

    The outputs checked are the parser's ``add_output`` options, or what ``outputs(args)`` returns for a command
    whose files follow from several options. Ctrl-C and SIGTERM interrupt ``main`` once (its clean-up runs; see
    ``interrupts``) and return 130 / 143."""
    _document_defaults(parser)
    _record_defaults(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    if not args.debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ours_or_errors)
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        # torch resets its own loggers' levels when it is imported (later, lazily): tell it through its setting
        os.environ.setdefault("TORCH_LOGS", TORCH_QUIET_LOGS)
        _quiet_opencv()
        for category, message in KNOWN_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
    try:
        inputs, declared = declared_paths(parser, args)
        check_paths(inputs, outputs(args) if outputs else declared)
        with stop_signals():
            code = main(args)
            raise_pending()  # a stop signal swallowed on its way (the command ran on): it still ends the command
            return code
    except OffsegError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(describe(interrupt), file=sys.stderr)
        return exit_code(interrupt)
