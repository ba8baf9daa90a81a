"""The ``encoderkit`` command line."""

from __future__ import annotations

import argparse

from encoderkit.tour import PRESETS, run_tour


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encoderkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tour = commands.add_parser(
        "tour", help="build an encoder, run a padded batch, check it against the math path"
    )
    tour.add_argument("--preset", choices=sorted(PRESETS), default="minilm_l6")
    tour.add_argument("--batch", type=int, default=4)
    tour.add_argument("--seq-len", type=int, default=64)
    tour.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tour":
        if args.batch < 1 or args.seq_len < 1:
            raise SystemExit("encoderkit tour: --batch and --seq-len must be at least 1")
        run_tour(args.preset, args.batch, args.seq_len, args.seed)
    return 0
