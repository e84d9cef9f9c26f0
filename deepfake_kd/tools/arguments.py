"""argparse types the commands share."""

from __future__ import annotations

import argparse


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
