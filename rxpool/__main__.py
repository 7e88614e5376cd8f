"""The ``rxpool`` command line (also ``python -m rxpool``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxpool", description="Run many jobs N at a time and stream the results."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the worker-pool demo end to end")
    demo.add_argument("--jobs", type=_positive_int, default=2000, help="jobs in the full run")
    demo.add_argument("--workers", type=_positive_int, default=50, help="workers (N)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import main as demo

        return demo(sys.stdout, jobs=args.jobs, workers=args.workers)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
