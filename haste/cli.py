"""The ``haste`` command. Each subcommand lives in the module that does the work and registers itself
with ``add_command(subparsers)``: train (haste.train), evaluate (haste.evaluate), sweep and calibrate
(haste.sweep), bench (haste.bench), serve (service.cli)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("haste.train", "haste.evaluate", "haste.sweep", "haste.bench", "service.cli")


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
