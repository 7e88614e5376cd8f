"""The ``rxpool`` command line (also ``python -m rxpool``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _cli
from ._cli import _positive_int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxpool", description="Run many jobs N at a time and stream the results."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the worker-pool demo end to end")
    demo.add_argument("--jobs", type=_positive_int, default=2000, help="jobs in the full run")
    demo.add_argument("--workers", type=_positive_int, default=50, help="workers (N)")
    mapper = commands.add_parser(
        "map",
        help="run MODULE:FUNCTION over input lines, writing one JSON line per result",
        description=_cli.__doc__.split("\n\n", 1)[1] if _cli.__doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cli.add_arguments(mapper)
    mapper.set_defaults(command_parser=mapper)  # its errors name its usage
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import main as demo

        return demo(sys.stdout, jobs=args.jobs, workers=args.workers)
    if args.command == "map":
        try:
            return _cli.run_map(args, args.command_parser, sys.stdin, sys.stdout, sys.stderr)
        except KeyboardInterrupt:  # a second Ctrl-C while the first one's results drain
            print("rxpool map: interrupted", file=sys.stderr)
            return 130
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
