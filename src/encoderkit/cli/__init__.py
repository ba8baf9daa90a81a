"""The ``encoderkit`` command line: a thin dispatcher over one module per command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from encoderkit.cli import attention, bench, embed, export, tour, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="encoderkit", description="The Transformer encoder: train, embed, look inside."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (tour, embed, train, attention, bench, export):
        command.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return dispatch(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader (``head``, say) closed the pipe: stop quietly, as ``cat`` does, and point
        # stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # the status of a process killed by SIGPIPE


def dispatch(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; a file that cannot be read or written ends it with one
    line naming the file."""
    if argv[:1] == ["bench"]:  # its flags belong to benchmarks.compare
        return bench.run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    for flag in ("out", "html"):
        path = getattr(args, flag, None)
        if args.command not in ("train", "export") and path is not None and Path(path).is_dir():
            raise SystemExit(
                f"encoderkit {args.command}: --{flag} must name a file to write, got the "
                f"directory {path}"
            )
    try:
        return int(args.run(args))
    except BrokenPipeError:
        raise  # not an error: see main
    except OSError as e:  # a read-only folder, a full disk, a path through a file
        where = f": {e.filename}" if e.filename else ""
        raise SystemExit(f"encoderkit {args.command}: {e.strerror or e}{where}") from e
