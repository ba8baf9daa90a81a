"""Plain text for masked-language modelling (Devlin et al. 2019, section 3.1): read, split,
tokenize and pack into rows of tokens, plus a synthetic corpus with structure a model can learn.

A *document* is one non-empty line of the text, stripped of surrounding whitespace: the corpus
is a UTF-8 ``.txt`` file, or a folder whose ``*.txt`` files (recursively, in sorted path order)
are read one after another. Blank lines are skipped; nothing joins consecutive lines.

Each line is tokenized on its own as ``[CLS] ... [SEP]`` (the tokenizer's post-processor adds
them). A line of more than ``max_length`` tokens is cut by the tokenizer's own overflow into
pieces that each hold at most ``max_length`` tokens, every piece again ``[CLS] ... [SEP]``, and
each piece is a document of its own from then on: no piece attends to another.

Packing (as RoBERTa's FULL-SENTENCES, Liu et al. 2019, section 4.2, but without attention
across documents) puts documents greedily, in order, into rows of at most ``max_length`` tokens,
so a row of short lines carries little padding. A row's tensors: ``ids`` (N, T) int64,
``doc`` (N, T) int32 numbering the documents within the row 1, 2, ... and 0 on padding, and
``word_start`` (N, T) bool, True on the first piece of each word (from the tokenizer's
``word_ids``: for WordPiece, a piece not starting with "##"; special tokens are never word
starts), which whole-word masking needs. The objective unpacks each row into one sequence per
document again (see ``objectives.mlm``).

Shape legend: N rows, T tokens per row.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from encoderkit.training.data.splits import shuffled_split

VALID_FRACTION = 0.1
TEST_FRACTION = 0.1


class EncodedLine(NamedTuple):
    """One document's token ids, ``[CLS] ... [SEP]``, and which of them start a word."""

    ids: list[int]
    word_start: list[bool]


class Rows(NamedTuple):
    """Packed documents: ids (N, T) int64, doc (N, T) int32 (1..k within a row, 0 = padding),
    word_start (N, T) bool."""

    ids: torch.Tensor
    doc: torch.Tensor
    word_start: torch.Tensor


def read_documents(path: str | os.PathLike[str]) -> list[str]:
    """The non-empty lines, stripped, of a UTF-8 text file, or of every ``*.txt`` file under a
    folder (recursively, sorted by path). A missing path is a ``FileNotFoundError``; a folder
    without ``.txt`` files, a corpus without text and bytes that are not UTF-8 (naming the file
    and line) are ``ValueError``s."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no text file or folder at {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"{path}: expected .txt files in this folder, found none")
    else:
        files = [path]
    documents: list[str] = []
    for file in files:
        documents.extend(_read_lines(file))
    if not documents:
        where = f"{path} ({len(files)} .txt files)" if path.is_dir() else str(path)
        raise ValueError(f"{where}: no text found, every line is empty")
    return documents


def _read_lines(file: Path) -> list[str]:
    data = file.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"{file}, line {line}: expected UTF-8 text, got byte 0x{data[e.start]:02x} at "
            f"byte {column} of the line ({e.reason})"
        ) from e
    return [line for line in (raw.strip() for raw in text.split("\n")) if line]


def split(
    documents: Sequence[str],
    seed: int,
    valid_fraction: float = VALID_FRACTION,
    test_fraction: float = TEST_FRACTION,
) -> tuple[list[str], list[str], list[str]]:
    """(train, valid, test) documents: a seeded random ``valid_fraction`` and ``test_fraction``
    of them (rounded, at least 1 each), the rest for training; each keeps the corpus order. Split
    before packing, so no line is in two splits."""
    for name, fraction in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {fraction}")
    n = len(documents)
    if n < 3:
        raise ValueError(
            f"need at least 3 documents (non-empty lines) to split into train, valid and test, "
            f"got {n}"
        )
    n_valid = max(1, round(valid_fraction * n))
    n_test = max(1, round(test_fraction * n))
    if n_valid + n_test >= n:
        raise ValueError(
            f"{n} documents leave none for training after {n_valid} for validation and {n_test} "
            f"for testing"
        )
    train, valid, test = shuffled_split(n, n_valid, n_test, seed)
    return _take(documents, train), _take(documents, valid), _take(documents, test)


def _take(documents: Sequence[str], index: np.ndarray) -> list[str]:
    return [documents[i] for i in index.tolist()]


def encode_lines(tokenizer: Any, lines: Sequence[str], max_length: int) -> list[EncodedLine]:
    """Each line tokenized by ``tokenizer`` (a ``tokenizers.Tokenizer`` that adds [CLS] and
    [SEP]), a line longer than ``max_length`` tokens cut into pieces of at most ``max_length``,
    each with its own [CLS] and [SEP], each piece an ``EncodedLine`` of its own, in order. The
    first real token of a piece starts a word even when it continues one cut at the boundary."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise ValueError(
            f"max_length must be an int >= 3 ([CLS], a token, [SEP]), got {max_length!r}"
        )
    from tokenizers import Tokenizer

    # a copy: the caller's tokenizer keeps its own truncation and padding
    cutter = Tokenizer.from_str(tokenizer.to_str())
    cutter.no_padding()
    cutter.enable_truncation(max_length=max_length, stride=0)
    encoded: list[EncodedLine] = []
    for encoding in cutter.encode_batch(list(lines)):
        for piece in (encoding, *encoding.overflowing):
            words = piece.word_ids
            starts = [w is not None and (i == 0 or words[i - 1] != w) for i, w in enumerate(words)]
            encoded.append(EncodedLine(list(piece.ids), starts))
    return encoded


def pack(lines: Sequence[EncodedLine], max_length: int) -> Rows:
    """Documents put greedily, in order, into rows of at most ``max_length`` tokens: a
    document that does not fit in the current row starts the next one."""
    _check_lengths(lines, max_length)
    rows: list[list[EncodedLine]] = []
    used = max_length  # a full "row" before the first, so the first document opens one
    for line in lines:
        if used + len(line.ids) > max_length:
            rows.append([])
            used = 0
        rows[-1].append(line)
        used += len(line.ids)
    return _rows(rows)


def one_per_row(lines: Sequence[EncodedLine]) -> Rows:
    """One document per row, no packing (``--no-pack``)."""
    return _rows([[line] for line in lines])


def _check_lengths(lines: Sequence[EncodedLine], max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    for i, line in enumerate(lines):
        if not line.ids:
            raise ValueError(f"document {i} has no tokens")
        if len(line.ids) > max_length:
            raise ValueError(
                f"document {i} has {len(line.ids)} tokens, more than max_length={max_length}: "
                f"encode_lines cuts long lines into pieces first"
            )


def _rows(rows: list[list[EncodedLine]]) -> Rows:
    width = max((sum(len(line.ids) for line in row) for row in rows), default=0)
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    doc = torch.zeros(len(rows), width, dtype=torch.int32)
    word_start = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, row in enumerate(rows):
        at = 0
        for number, line in enumerate(row, start=1):
            end = at + len(line.ids)
            ids[r, at:end] = torch.tensor(line.ids, dtype=torch.int64)
            doc[r, at:end] = number
            word_start[r, at:end] = torch.tensor(line.word_start, dtype=torch.bool)
            at = end
    return Rows(ids, doc, word_start)


def unpack(
    ids: torch.Tensor, doc: torch.Tensor, word_start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed rows back to one document per row: (ids (D, L), mask (D, L) bool, word_start
    (D, L)) for the D documents of the rows in order, L the longest, right-padded with id 0.

    The documents of a row must sit contiguously (as :func:`pack` leaves them); a document's
    tokens keep their order, so its positions restart at 0.
    """
    if not (ids.shape == doc.shape == word_start.shape) or ids.dim() != 2:
        raise ValueError(
            f"expected ids, doc and word_start of one (N, T) shape, got {tuple(ids.shape)}, "
            f"{tuple(doc.shape)} and {tuple(word_start.shape)}"
        )
    n, t = ids.shape
    real = doc > 0  # (N, T)
    # one key per (row, document), in row-major order: equal keys are one document's tokens
    key = (torch.arange(n, device=ids.device)[:, None] * (t + 1) + doc)[real]  # (N, T) -> (M,)
    _, lengths = torch.unique_consecutive(key, return_counts=True)  # (D,)
    longest = int(lengths.max()) if lengths.numel() else 0
    which = torch.repeat_interleave(torch.arange(len(lengths), device=ids.device), lengths)  # (M,)
    starts = lengths.cumsum(0) - lengths  # (D,): each document's first token among the M
    at = torch.arange(len(key), device=ids.device) - starts[which]  # (M,): position in its document
    out_ids = ids.new_zeros(len(lengths), longest)
    out_ids[which, at] = ids[real]
    mask = torch.zeros(len(lengths), longest, dtype=torch.bool, device=ids.device)
    mask[which, at] = True
    out_start = torch.zeros_like(mask)
    out_start[which, at] = word_start[real]
    return out_ids, mask, out_start


# The synthetic corpus: a small grammar whose words depend on each other, so a masked word can be
# told from its context, unlike a unigram guess. The rules a model can learn:
# * number agreement: determiner, noun, verb ("eats" / "eat"), "is" / "are", "was" / "were"
#   and pronoun ("it" / "they") agree with the subject's number;
# * selection: animals eat, chase and drink; people read, write, cook and feed; each verb takes
#   one class of object (eats food, reads texts, feeds animals) and adjectives fit their noun's
#   class (ripe apple, long letter, hungry fox);
# * collocation: each verb happens in its own places (reads ... in the library, cooks ... in the
#   kitchen), "a" becomes "an" before a vowel, and fixed phrases ("once upon a time there",
#   "a cup of tea every morning").
NOUNS = {
    "animal": [("fox", "foxes"), ("dog", "dogs"), ("cat", "cats"), ("horse", "horses"),
               ("bird", "birds"), ("rabbit", "rabbits"), ("wolf", "wolves"), ("bear", "bears")],
    "person": [("teacher", "teachers"), ("farmer", "farmers"), ("child", "children"),
               ("doctor", "doctors"), ("student", "students"), ("king", "kings"),
               ("queen", "queens")],
}  # fmt: skip
OBJECTS = {
    "food": ["apple", "bread", "cheese", "carrot", "cake", "egg"],
    "text": ["book", "letter", "poem", "story", "newspaper"],
    "liquid": ["water"],
}
ADJECTIVES = {
    "animal": ["small", "big", "old", "young", "quick", "lazy", "brown", "hungry"],
    "person": ["tall", "kind", "busy", "wise", "happy", "young", "old"],
    "food": ["red", "green", "fresh", "ripe", "sweet"],
    "text": ["long", "short", "old", "new", "funny", "interesting"],
    "liquid": ["cold", "fresh", "clean"],
}
# subject class -> (verb, verb with -s, object class, places)
VERBS = {
    "animal": [("eat", "eats", "food", ["field", "garden"]),
               ("chase", "chases", "animal", ["forest", "park"]),
               ("drink", "drinks", "liquid", ["river", "lake"])],
    "person": [("read", "reads", "text", ["library", "school"]),
               ("write", "writes", "text", ["office"]),
               ("cook", "cooks", "food", ["kitchen"]),
               ("feed", "feeds", "animal", ["farm", "zoo"])],
}  # fmt: skip
SINGULAR_DETERMINERS = ["the", "a", "this", "that", "every"]
PLURAL_DETERMINERS = ["the", "these", "those", "many", "some", "two", "three"]
TIMES = ["morning", "evening", "day", "night", "week"]
DRINKS = ["tea", "coffee", "milk"]


def generate_corpus(n_lines: int, seed: int) -> list[str]:
    """``n_lines`` lowercase English-like sentences from a small grammar with agreement,
    selection and collocation rules (see the comments above), the same for the same seed."""
    if isinstance(n_lines, bool) or not isinstance(n_lines, int) or n_lines < 0:
        raise ValueError(f"n_lines must be an int >= 0, got {n_lines!r}")
    rng = np.random.default_rng(seed)
    templates = (_action, _because, _once, _cup)
    weights = np.array([0.5, 0.2, 0.15, 0.15])
    return [" ".join(templates[rng.choice(len(templates), p=weights)](rng)) for _ in range(n_lines)]


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _subject(rng: np.random.Generator, adjective: bool) -> tuple[list[str], str, bool]:
    """(words of a subject noun phrase, its class, plural?)."""
    kind = _pick(rng, list(NOUNS))
    plural = bool(rng.random() < 0.5)
    noun = _pick(rng, NOUNS[kind])[plural]
    words = [_pick(rng, ADJECTIVES[kind]), noun] if adjective else [noun]
    det = _pick(rng, PLURAL_DETERMINERS if plural else SINGULAR_DETERMINERS)
    return [_article(det, words[0]), *words], kind, plural


def _noun(rng: np.random.Generator, kind: str) -> str:
    """A singular noun of ``kind``: an animal, a person, a food, a text or a liquid."""
    return _pick(rng, NOUNS[kind])[0] if kind in NOUNS else _pick(rng, OBJECTS[kind])


def _object(rng: np.random.Generator, kind: str) -> list[str]:
    noun = _noun(rng, kind)
    words = [_pick(rng, ADJECTIVES[kind]), noun] if rng.random() < 0.7 else [noun]
    det = "a" if rng.random() < 0.5 and kind != "liquid" else "the"
    return [_article(det, words[0]), *words]


def _article(det: str, following: str) -> str:
    return "an" if det == "a" and following[0] in "aeiou" else det


def _action(rng: np.random.Generator) -> list[str]:
    subject, kind, plural = _subject(rng, adjective=True)
    verb, verbs, objects, places = _pick(rng, VERBS[kind])
    return [*subject, verb if plural else verbs, *_object(rng, objects), "in", "the",
            _pick(rng, places), "."]  # fmt: skip


def _because(rng: np.random.Generator) -> list[str]:
    subject, kind, plural = _subject(rng, adjective=False)
    verb, verbs, objects, _ = _pick(rng, VERBS[kind])
    pronoun = "they" if plural else ("it" if kind == "animal" else _pick(rng, ["he", "she"]))
    return [*subject, "are" if plural else "is", _pick(rng, ADJECTIVES[kind]), "because",
            pronoun, verb if plural else verbs, "the", _noun(rng, objects), "every",
            _pick(rng, TIMES), "."]  # fmt: skip


def _once(rng: np.random.Generator) -> list[str]:
    kind = _pick(rng, list(NOUNS))
    plural = bool(rng.random() < 0.5)
    noun = _pick(rng, NOUNS[kind])[plural]
    adjective = _pick(rng, ADJECTIVES[kind])
    det = _pick(rng, ["two", "three", "many", "some"]) if plural else _article("a", adjective)
    return ["once", "upon", "a", "time", "there", "were" if plural else "was", det, adjective,
            noun, "."]  # fmt: skip


def _cup(rng: np.random.Generator) -> list[str]:
    plural = bool(rng.random() < 0.5)
    person = _pick(rng, NOUNS["person"])[plural]
    return ["the", person, "drink" if plural else "drinks", "a", "cup", "of", _pick(rng, DRINKS),
            "every", _pick(rng, ["morning", "evening"]), "."]  # fmt: skip
