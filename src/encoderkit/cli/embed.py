"""``encoderkit embed``: sentence embeddings of texts or of a file's lines, or their cosine
similarities, streamed in chunks so a file of any length runs in bounded memory."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# SentenceEncoder.encode's precisions (encoderkit.models.sentence.PRECISIONS), written out
# so that building the parser imports no model code.
PRECISIONS = ("fp32", "bf16", "fp16")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    embed = commands.add_parser(
        "embed", help="sentence embeddings of texts, or their cosine similarities"
    )
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--file", type=Path, help="also embed each non-empty line of this file")
    embed.add_argument(
        "--model",
        default="all-MiniLM-L6-v2",
        help="all-MiniLM-L6-v2 (shipped on PyPI), a sentence-transformers directory, or a "
        "`train --task pairs` run directory",
    )
    embed.add_argument("--similarity", action="store_true", help="print cosine similarities")
    embed.add_argument(
        "--query",
        action="append",
        metavar="TEXT",
        help="search: rank the texts (and --file lines) by similarity to TEXT; repeatable",
    )
    embed.add_argument(
        "--top-k",
        type=int,
        default=5,
        metavar="K",
        help="with --query: how many to show; default: 5",
    )
    embed.add_argument("--json", action="store_true", help="print JSON with full vectors")
    embed.add_argument(
        "--batch-size", type=int, default=32, help="texts per forward pass; default: 32"
    )
    embed.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="what the model computes in: fp32, or bf16 / fp16 under autocast (fast on CPUs "
        "with bf16 instructions, slow in fp16); the embeddings are float32 either way",
    )
    embed.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (the first batch compiles, which takes seconds)",
    )
    embed.set_defaults(run=embed_command)


# Texts are embedded and printed this many at a time, so any --file runs in bounded memory.
EMBED_CHUNK = 4096
# The N x N similarity table is built only with --similarity, and refused above this size.
MAX_SIMILARITY_BYTES = 1 << 30


def embed_command(args: argparse.Namespace) -> int:
    from encoderkit.models.pretrained import PretrainedError

    if args.batch_size < 1:
        raise SystemExit("encoderkit embed: --batch-size must be at least 1")
    if args.top_k < 1:
        raise SystemExit("encoderkit embed: --top-k must be at least 1")
    if args.query and args.similarity:
        raise SystemExit("encoderkit embed: give --query or --similarity, not both")
    count = len(args.texts) + (0 if args.file is None else _count_lines(args.file))
    if count == 0:
        raise SystemExit("encoderkit embed: give texts as arguments or with --file")
    if args.similarity and 4 * count * count > MAX_SIMILARITY_BYTES:
        raise SystemExit(
            f"encoderkit embed: --similarity over {count:,} texts needs a {count:,} x {count:,} "
            f"matrix ({4 * count * count / 2**30:.1f} GiB); the limit is "
            f"{MAX_SIMILARITY_BYTES / 2**30:.0f} GiB: give fewer texts, or drop --similarity "
            f"and compare the --json embeddings in chunks"
        )
    try:
        encoder = _load_encoder(args.model, args.compile)
    except (PretrainedError, ImportError, ValueError, OSError) as e:
        raise SystemExit(f"encoderkit embed: {e}") from e

    def chunks() -> Iterator[tuple[list[str], torch.Tensor]]:
        texts = _texts(args)
        while chunk := list(itertools.islice(texts, EMBED_CHUNK)):
            vectors = encoder.encode(
                chunk, batch_size=args.batch_size, precision=args.precision, convert_to_tensor=True
            )
            yield chunk, vectors  # (n, D)

    if args.query:
        return _search(args, encoder, chunks())
    if args.similarity:
        texts, parts = [], []
        for chunk, vectors in chunks():
            texts += chunk
            parts.append(vectors)
        vectors = torch.cat(parts)  # (N, D)
        similarity = vectors @ vectors.T  # unit vectors: dot product = cosine; (N, N)
        if args.json:
            payload = {"model": str(args.model), "texts": texts, "similarity": similarity.tolist()}
            print(json.dumps(payload, ensure_ascii=False))
        else:
            print(format_similarity(texts, similarity.tolist()))
    elif args.json:
        # The same JSON object as one json.dumps would write, streamed chunk by chunk.
        out = sys.stdout
        out.write(f'{{"model": {json.dumps(str(args.model))}, "texts": [')
        for i, text in enumerate(_texts(args)):
            out.write((", " if i else "") + json.dumps(text, ensure_ascii=False))
        out.write('], "embeddings": [')
        for i, (_, vectors) in enumerate(chunks()):
            out.write((", " if i else "") + ", ".join(json.dumps(v) for v in vectors.tolist()))
        out.write("]}\n")
    else:
        dim = encoder.model.config.d_model
        print(f"{count} embeddings of dimension {dim} ({args.model})")
        for chunk, vectors in chunks():
            for text, vector in zip(chunk, vectors.tolist(), strict=True):
                head = ", ".join(f"{v:+.4f}" for v in vector[:4])
                print(f"{_label(text, 40):<40}  [{head}, ..., {vector[-1]:+.4f}]")
    return 0


def _load_encoder(model: str, compile: bool) -> Any:
    """A sentence-transformers folder, MiniLM, or a training run: the folder a pairs run wrote
    (``RUN/sentence-encoder``), else the run's text encoder, mean (or the run's) pooled."""
    from encoderkit.models.sentence import SentenceEncoder

    run = Path(model)
    if not (run / "encoderkit-run.json").is_file():
        return SentenceEncoder.from_pretrained(model, compile=compile)
    if (run / "sentence-encoder").is_dir():
        return SentenceEncoder.from_pretrained(run / "sentence-encoder", compile=compile)
    from encoderkit.training.api import load_run

    return load_run(run).sentence_encoder(compile=compile)


def _search(
    args: argparse.Namespace,
    encoder: Any,
    chunks: Iterator[tuple[list[str], torch.Tensor]],
) -> int:
    """The ``--top-k`` texts most similar to each ``--query``, kept as a running top-k while the
    texts stream by, so a large --file needs memory for k texts, not for all of them."""
    queries = encoder.encode(
        args.query, batch_size=args.batch_size, precision=args.precision, convert_to_tensor=True
    )  # (Q, D)
    best_scores = torch.full((len(args.query), 0), -math.inf)  # (Q, <=k)
    best_texts: list[list[str]] = [[] for _ in args.query]
    for chunk, vectors in chunks:
        scores = torch.cat([best_scores, queries @ vectors.T], dim=1)  # (Q, k + n): cosines
        keep = torch.topk(scores, min(args.top_k, scores.shape[1]), dim=1)
        best_texts = [
            [(old + chunk)[int(i)] for i in row]
            for old, row in zip(best_texts, keep.indices, strict=True)
        ]
        best_scores = keep.values
    results = [
        {
            "query": q,
            "results": [{"text": t, "score": float(s)} for t, s in zip(ts, ss, strict=True)],
        }
        for q, ts, ss in zip(args.query, best_texts, best_scores, strict=True)
    ]
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
        return 0
    for result in results:
        print(f"query: {result['query']}")
        for rank, hit in enumerate(result["results"], start=1):
            print(f"{rank:>3}. {hit['score']:.3f}  {hit['text']}")
    return 0


def _texts(args: argparse.Namespace) -> Iterator[str]:
    """The texts given as arguments, then the non-empty lines of --file, read as needed."""
    yield from args.texts
    if args.file is not None:
        for _, line in _file_lines(args.file):
            if line.strip():
                yield line


def _count_lines(path: Path) -> int:
    """The non-empty lines of ``path``; reads it once, so a bad file fails before any output."""
    return sum(1 for _, line in _file_lines(path) if line.strip())


def _file_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, without line ends or a leading byte-order mark."""
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise SystemExit(
                        f"encoderkit embed: {path}, line {number}: not UTF-8 text (byte "
                        f"{raw[e.start]:#04x}, byte {e.start + 1} of the line); convert the "
                        f"file, e.g. iconv -f latin1 -t utf-8"
                    ) from None
                if number == 1:
                    line = line.removeprefix("\ufeff")  # the UTF-8 BOM some editors write
                yield number, line.rstrip("\r\n")
    except OSError as e:
        raise SystemExit(f"encoderkit embed: cannot read {path}: {e.strerror}") from e


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
