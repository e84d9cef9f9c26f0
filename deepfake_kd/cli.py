"""`python -m deepfake_kd <command>` (also installed as `deepfake-kd`): each command lives in a
module of `tools` that registers it (`add_cli`)."""

from __future__ import annotations

import argparse
import sys

from .errors import DeepfakeKDError
from .tools import analyze, bench, evaluate, loadtest, prepare_dfdc, publish, train

# Modules that register commands, in the order of the pipeline.
COMMAND_MODULES = [prepare_dfdc, train, evaluate, analyze, bench, publish, loadtest]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deepfake_kd", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_cli(subparsers)
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
