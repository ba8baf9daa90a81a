"""Labelled texts: CSV and JSON Lines read the same, every error names the file (and the line),
and the split is a seeded, stratified partition."""

from __future__ import annotations

import collections
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoderkit.training.data.text import (
    LabelledTexts,
    read_labelled_texts,
    read_texts,
    read_values,
    split,
)

ROWS = [
    ("Das Essen war großartig! 😋", "pos"),
    ("Терпимо, но не более.", "neutral"),
    ("最悪のサービスでした。", "neg"),
    ('She said, "fine"\nand left.', "neutral"),  # a comma, quotes and a newline inside a field
    ("مرحبا بالعالم", "pos"),
    ("", "neg"),  # an empty text is allowed; an empty label is not
]
EXPECTED = LabelledTexts(
    texts=[t for t, _ in ROWS],
    labels=[{"neg": 0, "neutral": 1, "pos": 2}[y] for _, y in ROWS],
    classes=["neg", "neutral", "pos"],
)


def write_csv(path, rows, header=("text", "label")):
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv(tmp_path):
    assert read_labelled_texts(write_csv(tmp_path / "reviews.csv", ROWS)) == EXPECTED


def test_jsonl_reads_the_same_and_skips_blank_lines(tmp_path):
    records = [{"text": t, "label": y, "extra": [1, 2]} for t, y in ROWS]
    records.insert(2, "   ")
    path = write_jsonl(tmp_path / "reviews.JSONL", [*records, ""])
    assert read_labelled_texts(path) == EXPECTED


def test_other_columns_a_bom_and_non_string_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "\ufeffid,body,stars\n1,good,5\n2,bad,1\n3,ok,3\n4,great, 5 \n", encoding="utf-8"
    )
    data = read_labelled_texts(path, text_column="body", label_column="stars")
    assert data == LabelledTexts(["good", "bad", "ok", "great"], [2, 0, 1, 2], ["1", "3", "5"])
    # JSON numbers and strings go through str(): 1 and "1" are one class, 10 sorts before 2
    records = [{"text": "a", "label": 1}, {"text": "b", "label": "1"}, {"text": "c", "label": 10}]
    records.append({"text": "d", "label": 2})
    data = read_labelled_texts(write_jsonl(tmp_path / "n.jsonl", records))
    assert data.classes == ["1", "10", "2"] and data.labels == [0, 0, 1, 2]


def test_regression_values_and_prediction_texts_come_from_the_named_columns(tmp_path):
    path = write_csv(tmp_path / "r.csv", [("good", "4.5"), ("bad", "1"), ("ok", " 3 ")],
                     header=("review", "stars"))  # fmt: skip
    assert read_values(path, "review", "stars") == (["good", "bad", "ok"], [4.5, 1.0, 3.0])
    assert read_texts(path, "review") == ["good", "bad", "ok"]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text', 'label'\] .* \['review'"):
        read_values(path)
    path = write_csv(tmp_path / "s.csv", [("good", "five")], header=("review", "stars"))
    with pytest.raises(ValueError, match="s.csv, row 1: expected a finite number in 'stars'"):
        read_values(path, "review", "stars")


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        (
            "d.txt",
            "text,label\n",
            ValueError,
            r"d.txt: unsupported file type '.txt'; supported: .csv, .jsonl",
        ),
        ("d", "", ValueError, r"unsupported file type '\(no extension\)'"),
        (
            "d.csv",
            "review,sentiment\nhi,pos\n",
            ValueError,
            r"d.csv: missing column\(s\) \['text', 'label'\] .* found columns \['review', 'sent",
        ),
        (
            "d.csv",
            "text\nhi\n",
            ValueError,
            r"missing column\(s\) \['label'\] in the header row; found columns \['text'\]",
        ),
        ("d.csv", "", ValueError, r"missing column\(s\) \['text', 'label'\] .* found columns \[\]"),
        (
            "d.csv",
            "text,label\na,x\nb,\nc,y\n",
            ValueError,
            r"d.csv, line 3: empty or missing label in 'label'",
        ),
        ("d.csv", "text,label\na,x\nb,  \n", ValueError, "line 3: empty or missing label"),
        (
            "d.csv",
            "label,text\nx,a\ny\n",
            ValueError,
            r"line 3: expected a string in 'text', got nothing",
        ),
        ("d.csv", "text,label\n", ValueError, r"d.csv: no labelled texts found"),
        (
            "d.csv",
            "text,label\na,x\nb,x\n",
            ValueError,
            r"at least 2 distinct labels in 'label', found only 'x' \(2 rows\)",
        ),
        (
            "d.jsonl",
            '{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"\n',
            ValueError,
            r"d.jsonl, line 3: not valid JSON",
        ),
        (
            "d.jsonl",
            '{"text": "a", "label": "x"}\n[1, 2]\n',
            ValueError,
            r"line 2: expected a JSON object, got list",
        ),
        (
            "d.jsonl",
            '{"text": "a", "label": "x"}\n{"body": "b", "label": "y"}\n',
            ValueError,
            r"d.jsonl, line 2: missing column\(s\) \['text'\]; found columns \['body', 'label'\]",
        ),
        (
            "d.jsonl",
            '{"text": "a", "label": null}\n',
            ValueError,
            r"line 1: empty or missing label",
        ),
        ("d.jsonl", '{"text": "a", "label": ""}\n', ValueError, r"line 1: empty or missing label"),
        (
            "d.jsonl",
            '{"text": "a", "label": ["x"]}\n',
            ValueError,
            r"line 1: expected a label in 'label', got a list",
        ),
        (
            "d.jsonl",
            '{"text": 3, "label": "x"}\n',
            ValueError,
            r"line 1: expected a string in 'text', got int",
        ),
        ("d.jsonl", "\n\n", ValueError, r"d.jsonl: no labelled texts found"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, name, content, error, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(error, match=message):
        read_labelled_texts(path)


def test_missing_file_undecodable_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="no labelled-text file at .*nothing.csv"):
        read_labelled_texts(tmp_path / "nothing.csv")
    with pytest.raises(ValueError, match="expected a file at"):
        read_labelled_texts(tmp_path)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncafé,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.csv: not UTF-8"):
        read_labelled_texts(latin1)
    with pytest.raises(TypeError, match="text_column must be a non-empty str"):
        read_labelled_texts(latin1, text_column="")


def labelled(counts):
    """Texts t0, t1, ... with class c repeated counts[c] times, interleaved."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    labels = labels[::2] + labels[1::2]
    return LabelledTexts(
        [f"t{i}" for i in range(len(labels))], labels, [f"c{c}" for c in range(len(counts))]
    )


def check_partition(data, train, test):
    assert sorted(train.texts + test.texts) == sorted(data.texts)
    assert not set(train.texts) & set(test.texts)
    assert train.classes == test.classes == data.classes
    label_of = dict(zip(data.texts, data.labels, strict=True))
    for part in (train, test):
        assert [label_of[t] for t in part.texts] == part.labels
        order = [data.texts.index(t) for t in part.texts]
        assert order == sorted(order)  # each part keeps the file order


def test_split_is_stratified_and_deterministic():
    data = labelled([50, 30, 15, 5])
    train, test = split(data)
    check_partition(data, train, test)
    assert len(test.texts) == 20
    assert collections.Counter(test.labels) == {0: 10, 1: 6, 2: 3, 3: 1}  # 20% of each class
    assert split(data) == (train, test)
    other = split(data, seed=1)
    assert other != (train, test)
    assert collections.Counter(other[1].labels) == collections.Counter(test.labels)


def test_split_keeps_every_class_in_both_parts_when_it_can():
    data = labelled([40, 2, 2, 2])  # 46 examples, 10 in test: each small class gives one
    train, test = split(data, test_fraction=0.2)
    check_partition(data, train, test)
    assert set(train.labels) == set(test.labels) == {0, 1, 2, 3}
    assert collections.Counter(test.labels) == {0: 7, 1: 1, 2: 1, 3: 1}


def test_a_singleton_class_falls_back_to_a_plain_shuffle():
    data = labelled([6, 3, 1])
    train, test = split(data, test_fraction=0.3, seed=3)
    check_partition(data, train, test)
    assert len(test.texts) == 3
    assert split(data, test_fraction=0.3, seed=3) == (train, test)


def test_extreme_fractions_keep_both_parts_non_empty():
    data = labelled([3, 3])
    assert [len(p.texts) for p in split(data, test_fraction=0.01)] == [5, 1]
    assert [len(p.texts) for p in split(data, test_fraction=0.99)] == [1, 5]
    assert [len(p.texts) for p in split(labelled([1, 1]), test_fraction=0.5)] == [1, 1]


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((labelled([1, 0]),), ValueError, "need at least 2 examples .* got 1"),
        ((labelled([3, 3]), 0.0), ValueError, "strictly between 0 and 1, got 0.0"),
        ((labelled([3, 3]), 1), ValueError, "strictly between 0 and 1, got 1"),
        ((labelled([3, 3]), "0.2"), TypeError, "test_fraction must be a float, got str"),
        ((labelled([3, 3]), 0.2, -1), ValueError, "seed must be a non-negative int, got -1"),
        ((LabelledTexts(["a", "b"], [0], ["x", "y"]),), ValueError, "2 texts but 1 labels"),
        (
            (LabelledTexts(["a", "b"], [0, 2], ["x", "y"]),),
            ValueError,
            "ints indexing the 2 classes",
        ),
        ((("a", "b"),), TypeError, "data must be LabelledTexts, got tuple"),
    ],
)
def test_split_errors(args, error, message):
    with pytest.raises(error, match=message):
        split(*args)


@given(
    counts=st.lists(st.integers(2, 30), min_size=2, max_size=6),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=100, deadline=None)
def test_split_properties(counts, fraction, seed):
    data = labelled(counts)
    n, k = len(data.texts), len(counts)
    train, test = split(data, test_fraction=fraction, seed=seed)
    check_partition(data, train, test)
    n_test = min(max(math.ceil(round(fraction * n, 9)), 1), n - 1)
    assert len(test.texts) == n_test
    if n_test >= k:
        assert set(test.labels) == set(range(k))
    if n - n_test >= k:
        assert set(train.labels) == set(range(k))
    # no class is further from its share than the minimum-one rules force
    per_class = collections.Counter(test.labels)
    if n_test >= k and n - n_test >= k:
        forced = sum(max(0.0, 1 - c * n_test / n) for c in counts)
        forced += sum(max(0.0, 1 - c * (n - n_test) / n) for c in counts)
        for c, count in enumerate(counts):
            assert abs(per_class[c] - count * n_test / n) < 1 + forced
