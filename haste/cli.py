"""The ``haste`` command. Each subcommand lives in the module that does the work and registers itself
with ``add_command(subparsers)``: train (haste_lab.train), evaluate (haste_lab.evaluate), sweep and calibrate
(haste_lab.sweep), bench (haste_lab.bench), serve (service.cli). The argparse types the subcommands share are
here, so a bad value is refused the same way everywhere: ``error: argument --batch: must be a positive
integer, got 0`` and exit status 2, before any model is loaded."""

from __future__ import annotations

import argparse
import importlib
import math
import sys

from .levels import MAX_HYPERPLANES

COMMAND_MODULES = (
    "haste_lab.train",
    "haste_lab.evaluate",
    "haste_lab.sweep",
    "haste_lab.bench",
    "haste_lab.plan_search",
    "service.cli",
)


def _integer(text: str, low: int, high: int | None, accepted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {accepted}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (images, batch size, rounds, threads, pixels)."""
    return _integer(text, 1, None, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type of an integer that may be 0 (warm-up rounds, a conv index)."""
    return _integer(text, 0, None, "a non-negative integer")


def hyperplane_count(text: str) -> int:
    """argparse type of a number of hyperplanes: 1..MAX_HYPERPLANES (level off is the dense model)."""
    return _integer(text, 1, MAX_HYPERPLANES, f"an integer from 1 to {MAX_HYPERPLANES} (--level off runs dense)")


def fraction(text: str) -> float:
    """argparse type of a probability in [0, 1) (the ternary hyperplanes' sparsity)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type of a finite number that may be 0 (a margin in standard errors)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number, 0 or more, got {text}")
    return value


def boolean(text: str) -> bool:
    """argparse type of a boolean flag value: true/false, yes/no, 1/0."""
    if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"must be true or false (yes/no, 1/0), got {text}")
    return text.lower() in ("true", "yes", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haste", description="HASTE: data-free channel merging for CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (name == exc.name or name.startswith(f"{exc.name}.")):  # a dependency is missing: say so
                raise
            continue
        module.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"haste {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
