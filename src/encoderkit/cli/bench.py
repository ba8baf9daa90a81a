"""``encoderkit bench``: the benchmark suite (``python -m benchmarks.compare``) of the source
checkout this package was installed from. The suite lives beside the package, not in it, so a
``pip install .`` has none: then the command says how to run it from a checkout."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
from pathlib import Path
from types import ModuleType

COMPARE = "benchmarks.compare"
PROG = "encoderkit bench"
INSTALL = "pip install -e '.[dev]'"  # the suite races transformers' BertModel


def add_parsers(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "bench",
        help="race encoderkit against torch and Hugging Face (flags: encoderkit bench --help)",
        add_help=False,
    )


def run_bench(argv: list[str]) -> int:
    """``encoderkit bench ARGS`` is ``python -m benchmarks.compare ARGS`` in the source checkout
    this package was installed from (``pip install -e .``, as ``make`` does)."""
    compare = import_compare()
    # The suite's parser calls itself ``python -m benchmarks.compare``: its help and errors are
    # caught and shown under this command's name, so that what it prints can be typed back.
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            compare.parse_args(argv)
    except SystemExit:
        sys.stdout.write(renamed(out.getvalue()))
        sys.stderr.write(renamed(err.getvalue()))
        raise
    return int(compare.main(argv))


def renamed(text: str, old: str = f"python -m {COMPARE}") -> str:
    """argparse's output with the program ``old`` called ``encoderkit bench``, the usage's
    continuation lines (indented under the first argument) indented under the new name."""
    indent = len("usage: ") + 1
    text = text.replace("\n" + " " * (indent + len(old)), "\n" + " " * (indent + len(PROG)))
    return text.replace(old, PROG)


def import_compare() -> ModuleType:
    """``benchmarks.compare`` from the checkout beside ``src/``, or a SystemExit that says how to
    get one."""
    root = Path(__file__).resolve().parents[3]
    if (root / "benchmarks" / "compare.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(COMPARE)  # outside the package: no type check
    except ModuleNotFoundError as e:
        if e.name not in ("benchmarks", COMPARE):
            raise SystemExit(
                f"{PROG}: the benchmark suite needs {e.name}, which is not installed; install "
                f"the checkout with its development extras: {INSTALL}"
            ) from e
        raise SystemExit(
            f"{PROG}: the benchmark suite (benchmarks/) is not part of the installed package; it "
            f"lives in the source repository. Run it from a clone: `{INSTALL}` (or `make "
            f"bench`) there, then `encoderkit bench` or `python -m {COMPARE}` in it"
        ) from e
