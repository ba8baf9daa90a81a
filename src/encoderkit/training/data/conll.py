"""Tagged words for token classification (named entities, say): CoNLL files, tags aligned with a
tokenizer's pieces, a seeded split, entity-level F1 and a synthetic corpus to learn.

File format (CoNLL-2003, Tjong Kim Sang and De Meulder 2003): one word per line, the word in the
first column and its tag in the last, columns separated by spaces or tabs; a blank line ends a
sentence. ``-DOCSTART-`` lines are skipped, and so are comment lines (starting with ``#`` and a
space, as CoNLL-U writes them) before a sentence's first word.

Tags are numbered "O" first, then the others in sorted order, so the outside tag is id 0 in
every run. Words reach the model as word pieces: the first piece of each word carries the word's
tag and every other piece, like the special tokens, carries ``IGNORE`` (-100, what
``cross_entropy`` skips): BERT's recipe for NER (Devlin et al. 2019, section 5.3).

Entities are scored as conlleval (the CoNLL-2000 shared task's script) and seqeval's default
mode score them: IOB2, with IOB1 (an I-X after O or after another type starts an entity) and
IOBES read too; precision, recall and F1 are micro-averaged over exact (type, start, end) matches.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from encoderkit.training.data.splits import shuffled_split
from encoderkit.utils.checks import check_positive_int
from encoderkit.utils.files import atomic_write_text

IGNORE = -100  # the label of pieces the loss and the scores skip
OUTSIDE = "O"
DOCSTART = "-DOCSTART-"
_FIELD = re.compile(r"[^ \t]+")  # CoNLL columns: split on spaces and tabs, not on NBSP inside words


class Sentence(NamedTuple):
    """A sentence's words and one tag per word."""

    words: list[str]
    tags: list[str]


def read_conll(path: str | os.PathLike[str]) -> list[Sentence]:
    """The tagged sentences of a UTF-8 CoNLL file (see the module's docstring).

    Errors name the file, and the line where one line is at fault: a missing file
    (``FileNotFoundError``), text that is not UTF-8, a line with a word and no tag, or no
    sentences at all (``ValueError``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no CoNLL file at {path}")
    if not path.is_file():
        raise ValueError(f"expected a CoNLL file at {path}, found a directory or other non-file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {bad}: not UTF-8 text ({e.reason})") from e
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        fields = _FIELD.findall(line.rstrip("\r"))
        if not fields or fields[0] == DOCSTART:
            if words:
                sentences.append(Sentence(words, tags))
            words, tags = [], []
        elif not words and line.startswith("# "):
            continue
        elif len(fields) < 2:
            raise ValueError(
                f"{path}, line {number}: expected a word and its tag (2 or more columns "
                f"separated by spaces or tabs), got 1 column: {line!r}"
            )
        else:
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append(Sentence(words, tags))
    if not sentences:
        raise ValueError(f"{path}: no tagged sentences found (expected lines of 'word ... tag')")
    return sentences


def write_conll(path: str | os.PathLike[str], sentences: Sequence[Sentence]) -> Path:
    """Write ``sentences`` as a two-column CoNLL file (word, tag), atomically."""
    for i, (words, tags) in enumerate(sentences):
        if len(words) != len(tags) or not words:
            raise ValueError(
                f"sentence {i}: expected one tag per word and at least one word, got "
                f"{len(words)} words and {len(tags)} tags"
            )
        odd = [w for w in (*words, *tags) if not w or _FIELD.fullmatch(w) is None]
        if odd:
            raise ValueError(f"sentence {i}: words and tags must not hold spaces, got {odd[:3]}")
    text = "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(*s, strict=True)) for s in sentences)
    return atomic_write_text(path, text + "\n")


def tag_names(sentences: Sequence[Sentence]) -> list[str]:
    """The distinct tags: "O" first (when present), then the others sorted."""
    found = {tag for _, tags in sentences for tag in tags}
    return [OUTSIDE] * (OUTSIDE in found) + sorted(found - {OUTSIDE})


def is_entity_tag(tag: str) -> bool:
    """ "O", or a position letter (B, I, E, S), a hyphen and a type: "B-PER"."""
    return tag == OUTSIDE or (len(tag) > 2 and tag[0] in "BIES" and tag[1] == "-")


class Aligned(NamedTuple):
    """One sentence as word pieces. ``labels[j]`` is the tag id of the word whose first piece is
    ``j``, else ``IGNORE``; ``first_piece[w]`` is word ``w``'s first piece, or -1 for a word
    with none; ``dropped`` counts those: words cut off at ``max_length`` (and any that tokenize
    to nothing, such as a lone zero-width space)."""

    ids: list[int]
    labels: list[int]
    first_piece: list[int]
    dropped: int


def align(tokenizer: Any, words: Sequence[str], tag_ids: Sequence[int], max_length: int) -> Aligned:
    """Tokenize pre-split ``words`` with ``tokenizer`` (a ``tokenizers.Tokenizer``, special tokens
    added) into at most ``max_length`` pieces and give the first piece of each word its tag id."""
    if len(words) != len(tag_ids):
        raise ValueError(f"expected one tag id per word, got {len(words)} words and {len(tag_ids)}")
    check_positive_int("max_length", max_length)
    with _limited(tokenizer, max_length):
        encoding = tokenizer.encode(list(words), is_pretokenized=True)
    labels = [IGNORE] * len(encoding.ids)
    first_piece = [-1] * len(words)
    for j, w in enumerate(encoding.word_ids):
        if w is not None and first_piece[w] < 0:
            first_piece[w] = j
            labels[j] = tag_ids[w]
    return Aligned(list(encoding.ids), labels, first_piece, first_piece.count(-1))


@contextlib.contextmanager
def _limited(tokenizer: Any, max_length: int) -> Iterator[None]:
    """The tokenizer truncating at ``max_length`` without padding, its settings restored after
    (a tokenizer.json may pad every encoding to 128, as all-MiniLM-L6-v2's does)."""
    truncation, padding = tokenizer.truncation, tokenizer.padding
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    try:
        yield
    finally:
        if truncation is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(**truncation)
        if padding is not None:
            tokenizer.enable_padding(**padding)


T = TypeVar("T")
HELD_OUT = 0.1  # of the sentences, for validation and again for test


def split(items: Sequence[T], seed: int = 0) -> tuple[list[T], list[T], list[T]]:
    """(train, validation, test): a seeded shuffle holds out 10% for each of validation and
    test (at least one each), the rest trains; every part keeps the items' order."""
    n = len(items)
    if n < 3:
        raise ValueError(f"need at least 3 sentences for train, validation and test, got {n}")
    held = max(1, math.ceil(round(HELD_OUT * n, 9)))  # rounded: 0.1 * 30 is 3.0000000000000004
    train, valid, test = ([items[i] for i in p] for p in shuffled_split(n, held, held, seed))
    return train, valid, test


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The (type, start, end) entities in one sentence's tags, ``end`` exclusive (seqeval's
    ``get_entities`` gives ``end - 1``), read as conlleval reads them."""
    found = []
    prev_tag, prev_type, start = OUTSIDE, "", 0
    for i, chunk in enumerate([*tags, OUTSIDE]):
        if not is_entity_tag(chunk):
            raise ValueError(f"expected 'O' or B-, I-, E-, S- and a type, got tag {chunk!r}")
        tag, kind = chunk[0], chunk[2:]
        if prev_tag != OUTSIDE and _ends(prev_tag, tag, prev_type, kind):
            found.append((prev_type, start, i))
        if tag != OUTSIDE and _starts(prev_tag, tag, prev_type, kind):
            start = i
        prev_tag, prev_type = tag, kind
    return found


def _ends(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """Whether the entity open at the previous tag (not O) ends before this one."""
    return prev_tag in "ES" or (tag in "BSO" and prev_tag in "BI") or prev_type != kind


def _starts(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """Whether this tag (not O) starts an entity: B and S always; I and E after O, E or S (IOB1,
    or a broken sequence), and any tag of another type than the previous one."""
    return tag in "BS" or (tag in "IE" and prev_tag in "OES") or prev_type != kind


def entity_f1(
    true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1: an entity counts as found when the
    prediction has one of the same type, start and end in the same sentence. A ratio with
    nothing to divide by is 0 (seqeval's ``zero_division=0``)."""
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(
            f"expected as many predicted as true sentences ({len(true_seqs)}), got {len(pred_seqs)}"
        )
    n_true = n_pred = n_right = 0
    for i, (truth, pred) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
        if len(truth) != len(pred):
            raise ValueError(
                f"sentence {i}: expected one predicted tag per word ({len(truth)}), got {len(pred)}"
            )
        true_set, pred_set = set(entities(truth)), set(entities(pred))
        n_true += len(true_set)
        n_pred += len(pred_set)
        n_right += len(true_set & pred_set)
    precision = n_right / n_pred if n_pred else 0.0
    recall = n_right / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# A synthetic corpus: people from a list of names, places from a list of cities (several of two
# or three words), organisations a name and a suffix ("Corp", "Bank"): a city or a surname
# followed by a suffix is an organisation, so the tags depend on the next word, not only on the
# word itself; "in" and "from" come before places and before other words ("from home").
FIRST = (
    "Anna Boris Carla Dmitri Elena Felix Grace Hiro Ines Jonas Kofi Lena Mateo Nadia Omar Priya "
    "Rosa Sven Tara Yusuf"
).split()
LAST = "Smith Garcia Tanaka Novak Okafor Berg Rossi Kowalski Haddad Lund".split()
CITIES = (
    "Paris, Berlin, Lagos, Lima, Oslo, Tokyo, Cairo, Dublin, Kyoto, Quito, New York, "
    "San Francisco, Buenos Aires, Rio de Janeiro, Hong Kong"
).split(", ")
COMPANIES = "Acme Globex Initech Umbrella Hooli Vandelay Cyberdyne Soylent".split()
SUFFIXES = ["Corp", "Inc", "Bank", "Group", "Labs"]
TEMPLATES = [
    "{PER} lives in {LOC} .",
    "{PER} flew from {LOC} to {LOC} on Monday .",
    "{PER} works for {ORG} .",
    "{PER} works from home in {LOC} .",
    "{ORG} opened an office in {LOC} .",
    "{ORG} hired {PER} last week .",
    "the weather in {LOC} was cold today .",
    "{PER} and {PER} met at the {ORG} office .",
    "shares of {ORG} rose in the morning .",
    "we visited {LOC} with {PER} from {ORG} .",
    "a letter from {PER} arrived in the afternoon .",
]


def generate_conll(n_sentences: int, seed: int = 0) -> list[Sentence]:
    """``n_sentences`` synthetic sentences tagged with PER, LOC and ORG entities in IOB2, the
    same for the same seed (see the lists above); write them with :func:`write_conll`."""
    check_positive_int("n_sentences", n_sentences)
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n_sentences):
        words: list[str] = []
        tags: list[str] = []
        for part in str(rng.choice(TEMPLATES)).split():
            if part in ("{PER}", "{LOC}", "{ORG}"):
                kind = part[1:-1]
                name = _name(kind, rng).split()
                words += name
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
            else:
                words.append(part)
                tags.append(OUTSIDE)
        sentences.append(Sentence(words, tags))
    return sentences


def _name(kind: str, rng: np.random.Generator) -> str:
    if kind == "PER":
        first = str(rng.choice(FIRST))
        return first if rng.random() < 0.4 else f"{first} {rng.choice(LAST)}"
    if kind == "LOC":
        return str(rng.choice(CITIES))
    head = str(rng.choice([*COMPANIES, *COMPANIES, *CITIES[:10], *LAST]))
    return f"{head} {rng.choice(SUFFIXES)}"
