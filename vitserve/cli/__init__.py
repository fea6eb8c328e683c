"""The `vitserve` command: one module per subcommand, each with its options beside its handler (`add(sub)`
registers both). Heavy libraries are imported inside the handlers, so `vitserve --help` stays instant and
imports no torch. Adding a command: a module here with `add`, listed in COMMANDS."""

from __future__ import annotations

import argparse
import logging
import sys

from vitserve import __version__
from vitserve.cli import bench, classify, export, healthcheck, models, quantize, serve, triton_repo
from vitserve.errors import VitServeError

COMMANDS = (models, export, triton_repo, classify, quantize, bench, serve, healthcheck)


def models_markdown() -> str:
    """The supported-models table of README.md (a test keeps the two equal)."""
    return models.markdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitserve",
                                     description="Export, verify and serve Vision Transformer image classifiers.")
    parser.add_argument("--version", action="version", version=f"vitserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details from the libraries")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except VitServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
