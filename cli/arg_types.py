"""argparse types shared by the command groups: each refuses a bad value by the flag's name, before any
data is read or process started."""

from __future__ import annotations

import argparse
import math


def seconds(text: str) -> float:
    """A duration in seconds: finite and > 0. inf would overflow deadlines and int() further down."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def _whole(text: str, low: int, high: int | None = None, what: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"must be {what}{bound}, got {text!r}")
    return value


def count(text: str) -> int:
    """A whole number >= 1 (repeats, instances, widths)."""
    return _whole(text, 1)


def non_negative(text: str) -> int:
    """A whole number >= 0 (0 often meaning "no limit")."""
    return _whole(text, 0)


def port(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    return _whole(text, 0, 65535, "a port ")
