"""`python -m deepfake_kd <command>`: each command lives beside the code it runs (`add_cli`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import DeepfakeKDError

# Modules that register a subcommand, in the order of the pipeline.
COMMAND_MODULES = ["data", "train", "distill", "evaluate", "analysis", "bench", "publish",
                   "loadtest"]


def positive_int(text: str) -> int:
    """argparse type for counts (frames, repeats, threads, limits)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deepfake_kd", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"deepfake_kd.{name}").add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DeepfakeKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
