"""Fine-tune all-MiniLM-L6-v2 on your own (anchor, positive[, negative]) pairs, then search a
folder of text files with the tuned encoder, beside the untouched one.

    python examples/finetune_then_search.py examples/data/pairs.csv examples/data/docs \\
        "a storm on a giant planet" --steps 30 --out runs/pairs-search

Training is ``encoderkit.fit("pairs", ...)``: in-batch negatives (sentence-transformers'
MultipleNegativesRankingLoss), the best checkpoint chosen by retrieval accuracy on held-out
pairs; the run writes ``OUT/sentence-encoder``, a sentence-transformers folder that
``semantic_search.py --model`` and ``encoderkit embed --model`` read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import encoderkit
from encoderkit import SentenceEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))  # semantic_search.py, beside this file
from semantic_search import build_index, load_passages, search


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path, help="a .csv / .jsonl of anchor,positive[,negative]")
    parser.add_argument("folder", type=Path, help="a folder of .txt files to search")
    parser.add_argument("query")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--out", default="runs/pairs-search")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text")
    args = parser.parse_args(argv)

    run = encoderkit.fit(
        "pairs",
        args.pairs,
        out=args.out,
        init="all-MiniLM-L6-v2",
        max_steps=args.steps,
        eval_every=max(1, args.steps // 2),
        batch_size=32,
        text_max_length=args.max_length,
    )
    start = next(r for r in run.metrics if r["split"] == "start")
    results = run.results or {}
    print(
        f"held-out retrieval accuracy: {start['retrieval_accuracy']:.3f} before, "
        f"{results.get('best_valid', float('nan')):.3f} after (validation); test "
        f"{results.get('test', {}).get('retrieval_accuracy', float('nan')):.3f}"
    )
    passages = load_passages(args.folder)
    for name, encoder in (
        ("all-MiniLM-L6-v2", SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")),
        ("fine-tuned", SentenceEncoder.from_pretrained(run.path / "sentence-encoder")),
    ):
        print(f"{name}:")
        for row, score in search(encoder, build_index(encoder, passages), args.query, args.top_k):
            file, text = passages[row]
            print(f"  {score:.3f}\t{file}\t{text}")


if __name__ == "__main__":
    main()
