"""Semantic search over a folder of text files: embed every paragraph, keep the vectors as an
index, and rank the paragraphs by cosine similarity to a query.

    python examples/semantic_search.py examples/data/docs "how do plants grow" --top-k 3
    python examples/semantic_search.py DOCS "query" --model runs/pairs/sentence-encoder

``--model`` is all-MiniLM-L6-v2 (shipped on PyPI) or any sentence-transformers folder, such as
the one ``encoderkit train --task pairs`` writes into its run. ``--index FILE`` saves the
embeddings (safetensors, with the passages beside them) so later queries skip the embedding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from encoderkit import SentenceEncoder


def load_passages(folder: Path) -> list[tuple[str, str]]:
    """(file name, paragraph) for every blank-line-separated paragraph of every *.txt file."""
    files = sorted(folder.rglob("*.txt"))
    if not files:
        raise SystemExit(f"no .txt files under {folder}")
    passages = []
    for path in files:
        for paragraph in path.read_text(encoding="utf-8").split("\n\n"):
            text = " ".join(paragraph.split())
            if text:
                passages.append((str(path.relative_to(folder)), text))
    return passages


def build_index(encoder: SentenceEncoder, passages: list[tuple[str, str]]) -> torch.Tensor:
    """(N, D) unit vectors, one per passage."""
    return encoder.encode([text for _, text in passages], batch_size=32, convert_to_tensor=True)


def search(
    encoder: SentenceEncoder, index: torch.Tensor, query: str, k: int
) -> list[tuple[int, float]]:
    """The k passages most similar to ``query``: (row of the index, cosine similarity)."""
    vector = encoder.encode(query, convert_to_tensor=True)  # (D,)
    scores = index @ vector  # (N, D) @ (D,) -> (N,): cosines, the vectors are unit length
    top = torch.topk(scores, min(k, len(scores)))
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices, strict=True)]


def save_index(path: Path, index: torch.Tensor, passages: list[tuple[str, str]]) -> None:
    from safetensors.torch import save_file

    from encoderkit.utils.files import atomic_write, atomic_write_text

    atomic_write(path, lambda tmp: save_file({"index": index.contiguous()}, str(tmp)))
    atomic_write_text(path.with_suffix(".json"), json.dumps(passages))


def load_index(path: Path) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    from safetensors.torch import load_file

    passages = [tuple(p) for p in json.loads(path.with_suffix(".json").read_text())]
    return load_file(str(path))["index"], passages  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of .txt files")
    parser.add_argument("query")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--index", type=Path, help="embeddings saved here, and read if present")
    args = parser.parse_args(argv)
    encoder = SentenceEncoder.from_pretrained(args.model)
    if args.index is not None and args.index.is_file():
        index, passages = load_index(args.index)
    else:
        passages = load_passages(args.folder)
        index = build_index(encoder, passages)
        if args.index is not None:
            save_index(args.index, index, passages)
    for row, score in search(encoder, index, args.query, args.top_k):
        name, text = passages[row]
        print(f"{score:.3f}\t{name}\t{text}")


if __name__ == "__main__":
    main()
