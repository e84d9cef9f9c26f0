"""argparse types and arguments the commands share."""

from __future__ import annotations

import argparse

from ..pipeline.tta import DEFAULT_TTA, TTAS


def positive_int(text: str) -> int:
    """argparse type for counts (frames, repeats, threads, limits)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type for a probability or a fraction: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_tta_argument(parser: argparse.ArgumentParser, *, models: str = "every model") -> None:
    """--tta: the test-time augmentation `models` answer with (`pipeline.tta`)."""
    parser.add_argument("--tta", choices=TTAS, default=DEFAULT_TTA,
                        help=f"test-time augmentation of {models}: flip (the default, as the "
                             "app answers: each face's logit averaged with its mirror image's; "
                             "twice the time per face) or none")
