"""The ``encoderkit`` command line: a thin dispatcher over one module per command.

Conventions, as git and cargo keep them: every flag and command has a line of help; flags are
never abbreviated (a prefix that works today would break when a longer flag is added); a
mistyped flag, command or choice is answered with the nearest ones and exit status 2; commands
that print results take ``--json`` for a machine-readable form.
"""

from __future__ import annotations

import argparse
import difflib
import os
import platform
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from encoderkit.cli import attention, bench, embed, export, tour, train


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without abbreviated flags, whose errors name the command
    (``encoderkit train: ...``, as the commands' own errors do) and suggest the nearest choice.
    Sub-commands' parsers are of this class too (``add_subparsers`` uses the parent's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # The message, then where the flags are: train's usage line alone is 35 lines.
        self.exit(2, f"{self.prog}: {self._with_suggestion(message)}\ntry '{self.prog} --help'\n")

    def _with_suggestion(self, message: str) -> str:
        # argparse names the argument and quotes the value; the choices come from the action,
        # since how the message lists them changed across Python versions.
        found = re.match(r"argument (.+?): invalid choice: (.+?) \(choose from", message)
        if found is None:
            return message
        name, value = found[1], found[2].strip("'\"")
        for action in self._actions:
            if action.choices is not None and name in (
                "/".join(action.option_strings),
                action.metavar,
                action.dest,
            ):
                if isinstance(action, argparse._SubParsersAction):
                    return f"unknown command {value!r}{did_you_mean(value, action.choices)}"
                return message + did_you_mean(value, (str(c) for c in action.choices))
        return message


def did_you_mean(given: str, options: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the option nearest ``given`` (``X or Y`` for near ties, as
    difflib scores them), or ``""`` when none scores 0.6 (difflib's cutoff)."""
    scored = sorted(
        ((difflib.SequenceMatcher(None, given, option).ratio(), option) for option in set(options)),
        key=lambda pair: (-pair[0], pair[1]),
    )
    if not scored or scored[0][0] < 0.6:
        return ""
    near = [option for ratio, option in scored[:3] if ratio >= scored[0][0] - 0.05]
    return f"; did you mean {' or '.join(near)}?"


def version() -> str:
    import torch

    from encoderkit import __version__

    python = platform.python_version()
    return f"encoderkit {__version__} (torch {torch.__version__}, Python {python})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="encoderkit", description="The Transformer encoder: train, embed, look inside."
    )
    parser.add_argument(
        "--version", action="version", version=version(), help="print the versions and exit"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
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
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        refuse_unknown(subparser(parser, args.command), extra)
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


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command``, a sub-command of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise ValueError(f"{parser.prog} has no sub-commands, so no {command!r}")


def refuse_unknown(parser: argparse.ArgumentParser, extra: list[str]) -> NoReturn:
    """Exit 2 naming the first unknown flag and the nearest known ones (or, with no flag among
    them, the arguments left over), with ``parser``'s usage line."""
    flags = [a for a in extra if a.startswith("-") and len(a) > 1]
    if not flags:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    given = flags[0].split("=", 1)[0]  # --epoch=3 names --epoch
    known = [s for action in parser._actions for s in action.option_strings]
    parser.error(f"unknown flag {given}{did_you_mean(given, known)}")
