"""The ``encoderkit`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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

    embed = commands.add_parser(
        "embed", help="sentence embeddings of texts, or their cosine similarities"
    )
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--file", type=Path, help="also embed each non-empty line of this file")
    embed.add_argument(
        "--model",
        default="all-MiniLM-L6-v2",
        help="all-MiniLM-L6-v2 (shipped on PyPI) or a sentence-transformers directory",
    )
    embed.add_argument("--similarity", action="store_true", help="print cosine similarities")
    embed.add_argument("--json", action="store_true", help="print JSON with full vectors")
    embed.add_argument("--batch-size", type=int, default=32)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tour":
        if args.batch < 1 or args.seq_len < 1:
            raise SystemExit("encoderkit tour: --batch and --seq-len must be at least 1")
        run_tour(args.preset, args.batch, args.seq_len, args.seed)
    elif args.command == "embed":
        embed(args)
    return 0


def embed(args: argparse.Namespace) -> None:
    from encoderkit.pretrained import PretrainedError
    from encoderkit.sentence import SentenceEncoder

    texts = list(args.texts)
    if args.file is not None:
        try:
            lines = args.file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise SystemExit(f"encoderkit embed: cannot read {args.file}: {e.strerror}") from e
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise SystemExit("encoderkit embed: give texts as arguments or with --file")
    if args.batch_size < 1:
        raise SystemExit("encoderkit embed: --batch-size must be at least 1")
    try:
        encoder = SentenceEncoder.from_pretrained(args.model)
    except (PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit embed: {e}") from e
    vectors = encoder.encode(texts, batch_size=args.batch_size)
    similarity = vectors @ vectors.T  # unit vectors: dot product = cosine
    if args.json:
        key, rows = ("similarity", similarity) if args.similarity else ("embeddings", vectors)
        payload = {"model": str(args.model), "texts": texts, key: rows.tolist()}
        json.dump(payload, sys.stdout, ensure_ascii=False)
        print()
    elif args.similarity:
        print(format_similarity(texts, similarity.tolist()))
    else:
        print(f"{len(texts)} embeddings of dimension {vectors.shape[1]} ({args.model})")
        for text, vector in zip(texts, vectors.tolist(), strict=True):
            head = ", ".join(f"{v:+.4f}" for v in vector[:4])
            print(f"{_label(text, 40):<40}  [{head}, ..., {vector[-1]:+.4f}]")


def format_similarity(texts: list[str], matrix: list[list[float]]) -> str:
    """A table of cosine similarities, rows labelled by text, columns by number."""
    width = min(max(len(_label(t, 40)) for t in texts), 40)
    header = " " * (width + 6) + "".join(f"{f'[{j + 1}]':>8}" for j in range(len(texts)))
    lines = [header]
    for i, (text, row) in enumerate(zip(texts, matrix, strict=True)):
        cells = "".join(f"{v:8.3f}" for v in row)
        lines.append(f"[{i + 1}] {_label(text, width):<{width}}  {cells}")
    return "\n".join(lines)


def _label(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
