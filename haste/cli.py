"""The ``haste`` command: train, evaluate, sweep, calibrate, bench, serve."""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .train import train

    for name in args.model:
        train(name, out_dir=Path(args.out) if args.out else None, data_dir=args.data_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haste", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train reference models (fixed recipe and seed)")
    p.add_argument("--model", nargs="+", required=True, help="reference model names (haste.zoo.names())")
    p.add_argument("--out", help="output directory (default: the package's zoo/weights)")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"haste {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
