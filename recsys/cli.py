"""The ``recsys`` command line.

Each command group lives in its own module under :mod:`recsys.commands` and exposes
``register(subparsers)``; this file only wires them together, sets up logging and turns expected user errors
(bad input, bad config) into a one-line message and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# OMP_WAIT_POLICY=PASSIVE is set by recsys/__init__.py, which runs before this module (and before torch,
# LightGBM or FAISS is imported).

COMMAND_MODULES = [
    "recsys.commands.data",
    "recsys.commands.demo",
    "recsys.commands.train",
    "recsys.commands.evaluate",
    "recsys.commands.experiment",
    "recsys.commands.metrics",
    "recsys.commands.serve",
]

logger = logging.getLogger("recsys")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description="A staged ranking and recommender engine.")
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors; no progress bars")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss", "faiss.loader"):  # logs every failed SIMD variant it probes at import
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.quiet, args.verbose)
    from recsys import progress

    progress.set_enabled(not args.quiet)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, KeyError) as exc:
        if args.verbose:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"recsys {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
