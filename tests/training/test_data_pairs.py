"""Text pairs: CSV and JSON Lines read the same, every error names the file (and the line), the
split is a seeded partition, and the synthetic paraphrases are reproducible, with hard negatives
that share more words with the anchor than its positive does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoderkit.training.data.pairs import Pairs, generate_pairs, read_pairs, split, write_pairs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "pairs.csv"

PAIRS = Pairs(
    anchors=["Wie spät ist es?", 'She said, "fine"\nand left.', "最悪のサービスでした。"],
    positives=["What time is it?", "She agreed and went away.", "The service was awful."],
    negatives=["Wie alt ist es?", "She said fine and stayed.", "最高のサービスでした。"],
)


def write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def records(pairs):
    columns = ["anchor", "positive"] + (["negative"] if pairs.negatives is not None else [])
    values = [pairs.anchors, pairs.positives] + ([pairs.negatives] if pairs.negatives else [])
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


@pytest.mark.parametrize("negatives", [True, False], ids=["triplets", "pairs"])
def test_csv_and_jsonl_read_the_same(tmp_path, negatives):
    pairs = PAIRS if negatives else PAIRS._replace(negatives=None)
    assert read_pairs(write_pairs(tmp_path / "p.csv", pairs)) == pairs
    rows = [r | {"id": i} for i, r in enumerate(records(pairs))]  # other columns are ignored
    rows.insert(1, "  ")  # blank lines are skipped
    assert read_pairs(write_jsonl(tmp_path / "p.JSONL", rows)) == pairs


def test_csv_with_a_bom_and_columns_in_any_order(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("\ufeffscore,positive,anchor\n1,b,a\n2,d,c\n", encoding="utf-8")
    assert read_pairs(path) == Pairs(["a", "c"], ["b", "d"], None)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.csv", "query,answer\nq,a\n",
         r"p.csv: missing column\(s\) \['anchor', 'positive'\].*columns \['query', 'answer'\]"),
        ("p.csv", "anchor,positive\na,b\nc\n",
         r"p.csv, line 3: expected a string in 'positive', got nothing \(a short row\)"),
        ("p.csv", "anchor,positive,negative\na,b,c\nd, ,f\n",
         r"p.csv, line 3: empty text in 'positive'"),
        ("p.csv", "anchor,positive\n", r"p.csv: no pairs found"),
        ("p.jsonl", '{"anchor": "a", "positive": "b"}\n[1, 2]\n',
         r"p.jsonl, line 2: expected a JSON object, got list"),
        ("p.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "a", "pos\n',
         r"p.jsonl, line 2: not valid JSON"),
        ("p.jsonl", '{"anchor": "a", "positive": 3}\n',
         r"p.jsonl, line 1: expected a string in 'positive', got int"),
        ("p.jsonl", '{"anchor": "a", "text": "b"}\n',
         r"p.jsonl, line 1: missing column\(s\) \['positive'\].*columns \['anchor', 'text'\]"),
        ("p.jsonl", '{"anchor": "a", "positive": "b", "negative": "c"}\n\n'
                    '{"anchor": "d", "positive": "e"}\n',
         r"p.jsonl, line 3: expected a 'negative' text, as on line 1"),
        ("p.txt", "a\tb\n", r"p.txt: unsupported file type '.txt'; supported: .csv, .jsonl"),
    ],
)  # fmt: skip
def test_errors_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_pairs(path)


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pairs file at .*none.csv"):
        read_pairs(tmp_path / "none.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes("anchor,positive\ncafé,bar\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.csv: not UTF-8 text"):
        read_pairs(path)


def test_split_is_a_seeded_partition_with_two_held_out_at_least():
    pairs = Pairs([f"a{i}" for i in range(31)], [f"p{i}" for i in range(31)], None)
    train, valid, test = split(pairs, seed=3)
    assert (len(train), len(valid), len(test)) == (23, 4, 4)  # ceil(3.1) held out twice
    rows = [int(a[1:]) for part in (train, valid, test) for a in part.anchors]
    assert sorted(rows) == list(range(31))
    for part in (train, valid, test):  # rows keep their pairing and the file order
        assert [a[1:] for a in part.anchors] == [p[1:] for p in part.positives]
        assert part.anchors == sorted(part.anchors, key=lambda a: int(a[1:]))
    assert split(pairs, seed=3) == (train, valid, test)
    assert split(pairs, seed=4)[2] != test
    small = Pairs([f"a{i}" for i in range(6)], [f"p{i}" for i in range(6)], None)
    assert [len(part) for part in split(small)] == [2, 2, 2]
    with pytest.raises(ValueError, match="need at least 6 pairs to hold out 2 for validation"):
        split(small.subset([0, 1, 2, 3, 4]))


def test_generated_pairs_are_reproducible_distinct_and_hard():
    pairs = generate_pairs(300, seed=1)
    assert pairs == generate_pairs(300, seed=1) and pairs != generate_pairs(300, seed=2)
    assert len(set(pairs.anchors)) == 300 and pairs.negatives is not None
    words = [[set(t.lower().strip(".").replace(",", "").split()) for t in texts]
             for texts in (pairs.anchors, pairs.positives, pairs.negatives)]  # fmt: skip

    def shared(a, b):
        return len(a & b) / len(a | b)

    with_positive = np.array([shared(a, p) for a, p, _ in zip(*words, strict=True)])
    with_negative = np.array([shared(a, n) for a, _, n in zip(*words, strict=True)])
    # the negative is the anchor with one slot changed; the positive rewords every slot
    assert (with_negative - with_positive).min() > 0.4  # measured: 0.42
    assert with_negative.mean() > 0.75 > 0.2 > with_positive.mean()  # measured: 0.80, 0.13
    assert all(n != a for a, n in zip(pairs.anchors, pairs.negatives, strict=True))
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        generate_pairs(0)


def test_the_example_file_is_generate_pairs_600():
    assert read_pairs(EXAMPLES) == generate_pairs(600, seed=0)
