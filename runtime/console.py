"""Shared command-line plumbing: logging set-up and turning user mistakes into one clear line."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .errors import OffsegError
from .interrupts import describe, exit_code, stop_signals


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


OUR_PACKAGES = ("offseg", "export", "runtime", "calibration", "chain")


def _ours_or_errors(record: logging.LogRecord) -> bool:
    """Without --debug, show our own progress logs and only errors from the libraries we call."""
    return record.name.split(".")[0] in OUR_PACKAGES or record.levelno >= logging.ERROR


def run(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv``, call ``main``; an OffsegError prints ``error: <message>`` and returns 2 (unless --debug).

    Ctrl-C and SIGTERM interrupt ``main`` once (its clean-up runs; see ``interrupts``) and return 130 / 143."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    if not args.debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ours_or_errors)
    try:
        with stop_signals():
            return main(args)
    except OffsegError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(describe(interrupt), file=sys.stderr)
        return exit_code(interrupt)
