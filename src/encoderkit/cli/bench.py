"""``encoderkit bench``: the benchmark suite (``python -m benchmarks.compare``) of the source
checkout this package was installed from."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def add_parsers(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "bench",
        help="race the peers (python -m benchmarks.compare; flags: encoderkit bench --help)",
        add_help=False,
    )


def run_bench(argv: list[str]) -> int:
    """``encoderkit bench ARGS`` is ``python -m benchmarks.compare ARGS`` in the source checkout
    this package was installed from (``pip install -e .``, as ``make`` does)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "benchmarks" / "compare.py").is_file():
        raise SystemExit(
            f"encoderkit bench: expected the benchmark suite at {root / 'benchmarks'}, found "
            f"none; it lives in the source repository, so install from a clone with "
            f"`pip install -e .` (or `make test`) and run it there"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    compare = importlib.import_module("benchmarks.compare")  # outside the package: no type check
    return int(compare.main(argv))
