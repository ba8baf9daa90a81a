"""A tag per word, from a CoNLL file (named entities, say): a ``TokenClassifier`` trained with
cross-entropy on the first piece of each word, scored by entity F1 as conlleval scores it (Devlin
et al. 2019, section 5.3; Tjong Kim Sang and De Meulder 2003). See ``data.conll`` for the file
format, the tag numbering and the scoring.

Tensors per split: ids, mask and labels (one per piece, ``IGNORE`` but on first pieces), then the
words' tags and each word's first piece (-1 for a word cut off at ``text_max_length``), so the
scores are over every word of every sentence: a word the model never saw counts as tagged "O".

Shape legend: B batch, T pieces, W words, C tags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.heads import TokenClassifier
from encoderkit.training.data.conll import (
    IGNORE,
    OUTSIDE,
    Sentence,
    align,
    entities,
    entity_f1,
    is_entity_tag,
    read_conll,
    split,
    tag_names,
)
from encoderkit.training.objectives.base import (
    Batch,
    Objective,
    Splits,
    Sums,
    Tensors,
    cut_columns,
    row_lengths,
)

log = logging.getLogger(__name__)

EVAL_BATCH = 64
COLUMNS = ("input_ids", "attention_mask", "labels", "word_tags", "first_piece")


class TagTokens(Objective):
    """Token classification: cross-entropy (with ``label_smoothing``) over labelled pieces;
    entity F1, precision, recall and word accuracy over words."""

    name = "tokens"
    metric = "entity_f1"
    classes: list[str]  # the tag names, set by load()

    # data

    def load(self) -> Splits:
        """The CoNLL file ``cfg.data``, split 80 / 10 / 10 by sentence (``data.conll.split``)."""
        if not self.cfg.data:
            raise ValueError(
                "the tokens task needs --data FILE (CoNLL: a word and its tag per line, a blank "
                "line between sentences)"
            )
        sentences = read_conll(self.cfg.data)
        names = tag_names(sentences)
        odd = [t for t in names if not is_entity_tag(t)]
        if odd:
            raise ValueError(
                f"{self.cfg.data}: the tokens task scores entities and expects IOB tags ('O', "
                f"'B-TYPE', 'I-TYPE'; IOBES's 'E-' and 'S-' too), got {odd[:5]}"
            )
        self.classes = names
        parts = split(sentences, seed=self.cfg.seed)
        train, valid, test = (
            self.encode(part, f"{self.cfg.data} ({which} split)")
            for part, which in zip(parts, ("train", "valid", "test"), strict=True)
        )
        return Splits(train, valid, test, names)

    def load_file(self, path: str) -> Tensors:
        """A CoNLL file as one split, for ``eval --data``: tags numbered as in training
        (``self.classes``); a tag training never saw is an error naming it."""
        sentences = read_conll(path)
        unknown = sorted({t for _, tags in sentences for t in tags} - set(self.classes))
        if unknown:
            raise ValueError(f"{path}: tags {unknown} are not among the run's tags {self.classes}")
        return self.encode(sentences, str(path))

    def encode(self, sentences: Sequence[Sentence], source: str = "") -> Tensors:
        """The split's tensors (see the module's docstring), tags numbered as in
        ``self.classes``."""
        index = {name: i for i, name in enumerate(self.classes)}
        tag_ids = [[index[t] for t in tags] for _, tags in sentences]
        words = [w for w, _ in sentences]
        return _encode(self.tokenizer, self.cfg.text_max_length, words, tag_ids, source)

    # model

    def build_model(self, config: TextConfig | VisionConfig, classes: Sequence[str]) -> nn.Module:
        if not isinstance(config, TextConfig):
            raise TypeError(f"the tokens task needs a TextConfig, got {type(config).__name__}")
        return TokenClassifier(config, len(classes), labels=list(classes))

    # steps

    def batch(self, tensors: Tensors, indices: torch.Tensor, device: torch.device) -> Batch:
        """Piece columns cut to the longest real sequence, word columns to the most words."""
        ids, mask, labels, word_tags, first_piece = (t[indices] for t in tensors)
        pieces = cut_columns((ids, mask, labels), row_lengths(mask))  # (B, T) -> (B, longest)
        words = cut_columns((word_tags, first_piece), row_lengths(word_tags != IGNORE))
        rows = [t.to(device, non_blocking=True) for t in (*pieces, *words)]
        return dict(zip(COLUMNS, rows, strict=True))

    def loss(
        self, model: nn.Module, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, Sums]:
        logits = model(batch["input_ids"], batch["attention_mask"]).float()  # (B, T, C)
        labels = batch["labels"]
        total = F.cross_entropy(
            logits.flatten(0, 1),  # (B, T, C) -> (B*T, C)
            labels.flatten(),
            ignore_index=IGNORE,
            reduction="sum",
            label_smoothing=self.cfg.label_smoothing,
        )
        n = int((labels != IGNORE).sum())
        right = int(((logits.argmax(-1) == labels) & (labels != IGNORE)).sum())
        return total / max(n, 1), {"loss": total.item(), "n": n, "accuracy": right}

    def evaluate(
        self, model: nn.Module, tensors: Tensors, device: torch.device
    ) -> dict[str, float]:
        """Mean cross-entropy (no smoothing) over labelled pieces; entity F1, precision and
        recall (``data.conll.entity_f1``) and the share of words tagged right, over words."""
        names = self.tag_names(model)
        n = len(tensors[0])
        loss_sum, pieces = 0.0, 0
        true_seqs: list[list[str]] = []
        pred_seqs: list[list[str]] = []
        for start in range(0, n, EVAL_BATCH):
            batch = self.batch(tensors, torch.arange(start, min(n, start + EVAL_BATCH)), device)
            logits = model(batch["input_ids"], batch["attention_mask"]).float()  # (B, T, C)
            labels = batch["labels"]
            loss_sum += F.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
            ).item()  # (B, T, C) -> (B*T, C)
            pieces += int((labels != IGNORE).sum())
            true, pred = _word_tags(logits.argmax(-1), batch["word_tags"], batch["first_piece"])
            true_seqs += [[names[t] for t in row] for row in true]
            pred_seqs += [[names[p] if p >= 0 else OUTSIDE for p in row] for row in pred]
        scores = entity_f1(true_seqs, pred_seqs)
        flat_true = [t for row in true_seqs for t in row]
        flat_pred = [p for row in pred_seqs for p in row]
        right = sum(t == p for t, p in zip(flat_true, flat_pred, strict=True))
        return {
            "loss": loss_sum / max(pieces, 1),
            "entity_f1": scores["f1"],
            "precision": scores["precision"],
            "recall": scores["recall"],
            "token_accuracy": right / max(len(flat_true), 1),
        }

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    # use

    def predict(self, model: nn.Module, items: Sequence[str]) -> list[dict[str, Any]]:
        """{"words", "tags", "entities"} per text: the text split on whitespace, a tag per word
        (words cut off at ``text_max_length`` get "O"), and its entities as {"type", "text",
        "start", "end"} with word offsets, ``end`` exclusive."""
        names = self.tag_names(model)
        device = next(model.parameters()).device
        records = []
        for start in range(0, len(items), EVAL_BATCH):
            texts = [text.split() for text in items[start : start + EVAL_BATCH]]
            tensors = _encode(
                self.tokenizer, self.cfg.text_max_length, texts, [[0] * len(w) for w in texts]
            )
            batch = self.batch(tensors, torch.arange(len(texts)), device)
            with torch.no_grad():
                logits = model(batch["input_ids"], batch["attention_mask"])  # (B, T, C)
            _, pred = _word_tags(logits.argmax(-1), batch["word_tags"], batch["first_piece"])
            for words, ids in zip(texts, pred, strict=True):
                tags = [names[p] if p >= 0 else OUTSIDE for p in ids]
                found = [
                    {"type": kind, "text": " ".join(words[a:b]), "start": a, "end": b}
                    for kind, a, b in entities(tags)
                ]
                records.append({"words": words, "tags": tags, "entities": found})
        return records

    def tag_names(self, model: nn.Module) -> list[str]:
        """The tags in id order: ``self.classes``, else the labels the model was built with
        (under a ``torch.compile`` or DistributedDataParallel wrapper)."""
        if getattr(self, "classes", None):
            return self.classes
        inner = model
        for attribute in ("_orig_mod", "module", "_orig_mod"):
            inner = getattr(inner, attribute, inner)
        labels = getattr(inner, "labels", None)
        if not labels:
            raise ValueError(
                "the tokens task needs its tag names: call load() first, or pass a model built "
                "with labels (TokenClassifier(..., labels=tags))"
            )
        return list(labels)


def _encode(
    tokenizer: Any,
    max_length: int,
    words: Sequence[Sequence[str]],
    tag_ids: Sequence[Sequence[int]],
    source: str = "",
) -> Tensors:
    """(ids (N, T), mask (N, T), labels (N, T), word_tags (N, W), first_piece (N, W)), padded
    with 0, False, IGNORE, IGNORE and -1; logs the words cut off at ``max_length`` when
    ``source`` names the data."""
    rows = [align(tokenizer, w, t, max_length) for w, t in zip(words, tag_ids, strict=True)]
    dropped = sum(row.dropped for row in rows)
    if dropped and source:
        log.warning(
            "%s: %d of %d words have no piece within text_max_length=%d (cut off, or nothing to "
            "tokenize): they count as tagged 'O' in the scores",
            source, dropped, sum(len(w) for w in words), max_length,
        )  # fmt: skip
    ids, mask = _pad([row.ids for row in rows], 0)
    labels, _ = _pad([row.labels for row in rows], IGNORE)
    word_tags, _ = _pad(tag_ids, IGNORE)
    first_piece, _ = _pad([row.first_piece for row in rows], -1)
    return ids, mask, labels, word_tags, first_piece


def _pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (N, L), mask (N, L)) right-padded with ``value`` to the longest row."""
    longest = max((len(row) for row in rows), default=0)
    out = torch.full((len(rows), longest), value, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return out, mask


def _word_tags(
    pred: torch.Tensor, word_tags: torch.Tensor, first_piece: torch.Tensor
) -> tuple[list[list[int]], list[list[int]]]:
    """(true, predicted) tag ids per word of each row, from piece predictions (B, T): a word's
    prediction is its first piece's, -1 for a word with no piece."""
    at_first = pred.gather(1, first_piece.clamp(min=0))  # (B, T) -> (B, W)
    at_first = torch.where(first_piece >= 0, at_first, -1)
    lengths = (word_tags != IGNORE).sum(dim=1).tolist()
    true, guess = word_tags.tolist(), at_first.tolist()
    return (
        [row[:k] for row, k in zip(true, lengths, strict=True)],
        [row[:k] for row, k in zip(guess, lengths, strict=True)],
    )
