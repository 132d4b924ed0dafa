"""The ``haste`` command. Each subcommand lives in the module that does the work and registers itself
with ``add_command(subparsers)``: train (haste_lab.train), evaluate (haste_lab.evaluate), sweep and calibrate
(haste_lab.sweep), bench (haste_lab.bench), serve (service.cli). The argparse types the subcommands share are
here, so a bad value is refused the same way everywhere: ``error: argument --batch: must be a positive
integer, got 0`` and exit status 2, before any model is loaded. So are the conversion options' flags
(``add_option_arguments``: one per ``haste.options.OPTIONS`` entry with a flag, typed by what it accepts)."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Iterable

from .levels import MAX_HYPERPLANES
from .options import OPTIONS, Flag, Integer, Number, OneOf, Option, shown

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


def _number(text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value < high:
        raise argparse.ArgumentTypeError(f"must be a number in [{low}, {high}), got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type of a probability in [0, 1) (the ternary hyperplanes' sparsity)."""
    return _number(text, 0, 1)


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


#: The conversion options the commands have flags for (``--patch-size`` for ``patch_size``), in field order.
FLAG_OPTIONS = tuple(option for option in OPTIONS if option.flag)


def option_type(option: Option) -> Callable[[str], object]:
    """The argparse type of ``option``'s flag: it refuses what the option does not accept (a choice's flag
    uses argparse's ``choices`` instead)."""
    accepts = option.accepts
    if isinstance(accepts, Integer):
        if accepts.high is None and accepts.low in (0, 1):
            return positive_int if accepts.low == 1 else non_negative_int
        return lambda text: _integer(text, accepts.low, accepts.high, accepts.accepted())
    if isinstance(accepts, Number):
        return lambda text: _number(text, accepts.low, accepts.high)
    if isinstance(accepts, Flag):
        return boolean
    return str


def add_option_arguments(group, options: Iterable[Option] = FLAG_OPTIONS, *, several: bool = False) -> None:
    """One flag per conversion option in ``options`` (``--patch-size`` sets ``args.patch_size``): one value,
    default None (the caller's default: a card's options, else the option's own), or with ``several`` one or more
    values, default [the option's default] (a sweep's axes). A True/False option's flag alone means true."""
    for option in options:
        kwargs: dict = {"type": option_type(option)}
        if isinstance(option.accepts, OneOf):
            kwargs = {"choices": option.accepts.choices}
        if several:
            kwargs.update(nargs="+", default=[option.default], help=f"{option.help}; one or more values, each "
                          f"{option.accepts.accepted()} (default {shown(option.default)})")  # fmt: skip
        else:
            kwargs.update(help=option.describe())
            if isinstance(option.accepts, Flag):
                kwargs.update(nargs="?", const=True)
        group.add_argument(f"--{option.name.replace('_', '-')}", **kwargs)


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
