"""Sentence embeddings from text pairs: a text encoder, mean (or [CLS]) pooling, trained with
in-batch negatives, sentence-transformers' MultipleNegativesRankingLoss (Henderson et al. 2017,
"Efficient Natural Language Response Suggestion for Smart Reply", section 4.4; Reimers &
Gurevych 2019 for the pooled encoder).

Each anchor scores every positive and every hard negative of its batch by cosine similarity times
``similarity_scale`` (20: a temperature of 0.05), and the loss is the cross-entropy of picking its
own positive. Held-out splits are scored by retrieval: each anchor against all the positives of
the split. The finished run is exported as a sentence-transformers directory that
``SentenceEncoder.from_pretrained`` and ``sentence_transformers.SentenceTransformer`` load.

Shape legend: B rows (pairs), T tokens, D model width, N rows of a split, C candidates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.pooling import Pooling, pool_tokens
from encoderkit.models.text import TextEncoder
from encoderkit.training.objectives.base import (
    Batch,
    Objective,
    Splits,
    Sums,
    Tensors,
    cut_columns,
    row_lengths,
    tokenizer_file,
)
from encoderkit.utils.checks import check_choice

log = logging.getLogger(__name__)

COLUMNS = ("anchor", "positive", "negative")  # each an (ids, mask) pair of tensors, in this order
EXPORT_DIR = "sentence-encoder"  # under the run directory


class SentenceEmbedder(nn.Module):
    """A text encoder and pooling: (B, T) token ids and mask -> (B, D) float32 sentence
    embeddings, not normalised (the loss and :class:`SentenceEncoder` normalise them)."""

    def __init__(self, config: TextConfig, pooling: Pooling = "mean") -> None:
        super().__init__()
        if not isinstance(config, TextConfig):
            raise TypeError(f"config must be a TextConfig, got {type(config).__name__}")
        check_choice("pooling", pooling, ("cls", "mean"))
        self.pooling: Pooling = pooling
        self.encoder = TextEncoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)  # (B, T) -> (B, T, D)
        # float32 from here, as SentenceEncoder pools: a half-precision mean loses the digits
        # that tell near-paraphrases apart. [CLS] pooling skips BERT's pooler, as
        # sentence-transformers' Pooling module does.
        return pool_tokens(hidden.float(), self.pooling, attention_mask)  # -> (B, D)


def ranking_scores(anchors: torch.Tensor, candidates: torch.Tensor, scale: float) -> torch.Tensor:
    """Cosine similarities times ``scale``: (B, D) anchors, (C, D) candidates -> (B, C), in
    float32 even under autocast: bfloat16's 8 bits would move a logit of 20 by 0.08, as much as
    the margins between near-paraphrases."""
    with torch.autocast(anchors.device.type, enabled=False):
        a = F.normalize(anchors.float(), p=2, dim=1)
        c = F.normalize(candidates.float(), p=2, dim=1)
        return a @ c.T * scale


class EmbedPairs(Objective):
    """(anchor, positive[, negative]) rows: the tensors of a split are (anchor ids, anchor mask,
    positive ids, positive mask[, negative ids, negative mask]), each (N, T) padded to the
    split's longest text of that column."""

    name = "pairs"
    metric = "retrieval_accuracy"

    def load(self) -> Splits:
        from encoderkit.training.data.pairs import read_pairs, split

        if not self.cfg.data:
            raise ValueError(
                "the pairs task needs --data FILE (a .csv or .jsonl with anchor, positive and "
                "optionally negative columns)"
            )
        parts = split(read_pairs(Path(self.cfg.data)), seed=self.cfg.seed)
        train, valid, test = (self.encode(part) for part in parts)
        return Splits(train, valid, test, classes=[])

    def load_file(self, path: str) -> Tensors:
        """Every row of a pairs file as one split, for ``eval --data``: retrieval among all of
        its positives."""
        from encoderkit.training.data.pairs import read_pairs

        return self.encode(read_pairs(Path(path)))

    def encode(self, pairs: Any) -> Tensors:
        """(anchor ids, mask, positive ids, mask[, negative ids, mask]), each (N, T) padded to the
        longest text of its column."""
        from encoderkit.models.sentence import pad_token_ids

        columns = [pairs.anchors, pairs.positives] + (
            [pairs.negatives] if pairs.negatives is not None else []
        )
        tensors: list[torch.Tensor] = []
        for texts in columns:
            encoded = self.tokenizer.encode_batch([t.strip() for t in texts])
            tensors.extend(pad_token_ids([e.ids for e in encoded]))  # (N, T) ids, mask
        return tuple(tensors)

    def build_model(self, config: TextConfig | VisionConfig, classes: Sequence[str]) -> nn.Module:
        if not isinstance(config, TextConfig):
            raise TypeError(f"the pairs task needs a TextConfig, got {type(config).__name__}")
        return SentenceEmbedder(config, pooling=self.cfg.pooling)

    def batch(self, tensors: Tensors, indices: torch.Tensor, device: torch.device) -> Batch:
        _check_tensors(tensors)
        out: Batch = {}
        for column, i in zip(COLUMNS, range(0, len(tensors), 2), strict=False):
            ids, mask = tensors[i][indices], tensors[i + 1][indices]  # (B, T) each
            ids, mask = cut_columns((ids, mask), row_lengths(mask))  # -> (B, T') each
            out[f"{column}_ids"] = ids.to(device, non_blocking=True)
            out[f"{column}_mask"] = mask.to(device, non_blocking=True)
        return out

    def loss(
        self, model: nn.Module, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, Sums]:
        columns = [c for c in COLUMNS if f"{c}_ids" in batch]
        B = batch["anchor_ids"].shape[0]
        # one forward for every text, as a DDP-wrapped or compiled model expects of a step; the
        # encoder is padding-free inside, so padding the shorter columns costs nothing
        ids, mask = _stack_padded(
            [batch[f"{c}_ids"] for c in columns], [batch[f"{c}_mask"] for c in columns]
        )  # -> (kB, T) each
        embeddings = model(ids, mask)  # (kB, T) -> (kB, D)
        anchors, candidates = embeddings[:B], embeddings[B:]  # (B, D), ((k-1)B, D)
        scores = ranking_scores(anchors, candidates, self.cfg.similarity_scale)  # (B, (k-1)B)
        target = torch.arange(B, device=scores.device)  # anchor i's positive is candidate i
        loss = F.cross_entropy(scores, target)
        right = (scores.argmax(dim=1) == target).sum()
        return loss, {"loss": float(loss.detach()) * B, "n": float(B), "accuracy": float(right)}

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, tensors: Tensors, device: torch.device
    ) -> dict[str, float]:
        """Retrieval over the whole split: ``retrieval_accuracy``, the share of anchors whose most
        similar positive (cosine, among all N positives of the split) is their own; ``mrr``, the
        mean of 1 / its rank (ties counted in its favour); ``loss``, the ranking loss with the
        whole split as one batch (every positive and hard negative of the split a candidate),
        computed exactly, in chunks of anchors."""
        _check_tensors(tensors)
        n = tensors[0].shape[0]
        if n == 0:
            raise ValueError("expected a split with at least one pair, got 0 rows")
        vectors = [
            _embed(model, tensors[i], tensors[i + 1], device, self.cfg.batch_size)
            for i in range(0, len(tensors), 2)
        ]  # k x (N, D)
        anchors, candidates = vectors[0], torch.cat(vectors[1:])  # (N, D), ((k-1)N, D)
        right, reciprocal, loss = 0.0, 0.0, 0.0
        for start in range(0, n, self.cfg.batch_size):
            rows = torch.arange(start, min(start + self.cfg.batch_size, n), device=device)
            scores = ranking_scores(anchors[rows], candidates, self.cfg.similarity_scale)
            own = scores[torch.arange(len(rows), device=device), rows]  # (b,)
            among_positives = scores[:, :n]  # (b, (k-1)N) -> (b, N)
            rank = 1 + (among_positives > own[:, None]).sum(dim=1)  # (b,)
            right += float((rank == 1).sum())
            reciprocal += float((1.0 / rank.double()).sum())
            loss += float(F.cross_entropy(scores.double(), rows, reduction="sum"))
        return {"loss": loss / n, "retrieval_accuracy": right / n, "mrr": reciprocal / n}

    def tokens(self, batch: Batch) -> int:
        return sum(int(batch[f"{c}_mask"].sum()) for c in COLUMNS if f"{c}_mask" in batch)

    @torch.no_grad()
    def predict(self, model: nn.Module, items: Sequence[str]) -> list[dict[str, Any]]:
        """One unit-length embedding per text: ``{"embedding": [D floats]}``."""
        from encoderkit.models.sentence import pad_token_ids

        if not items:
            return []
        encoded = self.tokenizer.encode_batch([str(t).strip() for t in items])
        ids, mask = pad_token_ids([e.ids for e in encoded])  # (N, T) each
        device = next(model.parameters()).device
        vectors = _embed(model, ids, mask, device, self.cfg.batch_size)  # (N, D)
        unit = F.normalize(vectors, p=2, dim=1).cpu()
        return [{"embedding": row.tolist()} for row in unit]

    def export(self, model: nn.Module, run: Path) -> None:
        """A sentence-transformers directory at ``run/sentence-encoder``: the encoder as a
        Hugging Face model (config.json, model.safetensors), the run's tokenizer, and the
        Transformer -> Pooling -> Normalize modules, reading at most ``text_max_length`` tokens."""
        from encoderkit.models.pretrained import PretrainedError

        try:
            path = export_sentence_encoder(
                model, Path(run) / EXPORT_DIR, tokenizer_file(self.cfg, self.run),
                self.cfg.text_max_length,
            )  # fmt: skip
        except (ValueError, PretrainedError) as e:  # no Hugging Face family expresses it
            log.warning(
                "no sentence-transformers folder for this model (%s); the run itself embeds: "
                "encoderkit embed --model %s, or encoderkit.load_run(...).sentence_encoder()",
                str(e).splitlines()[0],
                run,
            )
            return
        log.info("wrote the sentence encoder to %s", path)


def export_sentence_encoder(
    model: nn.Module, directory: Path, tokenizer_json: Path, max_seq_length: int
) -> Path:
    """Write ``model`` (a :class:`SentenceEmbedder`) as sentence-transformers lays out a model:
    every file atomically, the weights first, modules.json last."""
    from encoderkit.models import hub_files
    from encoderkit.models.pretrained import save_pretrained
    from encoderkit.utils.files import atomic_write_text

    if not isinstance(model, SentenceEmbedder):
        raise TypeError(f"expected a SentenceEmbedder, got {type(model).__name__}")
    config = model.encoder.config
    longest = config.longest_input
    if longest is not None and max_seq_length > longest:
        raise ValueError(
            f"max_seq_length must be at most the {longest} tokens the model's positions cover, "
            f"got {max_seq_length}"
        )
    save_pretrained(model.encoder, directory)
    # the files save_pretrained(tokenizer=) writes, AutoTokenizer's generic fast tokenizer, with
    # sentence-transformers' convention that the tokenizer's length is the encoder's
    files = hub_files.tokenizer_json(tokenizer_json, model.encoder)
    tokenizer_config = json.loads(files["tokenizer_config.json"])
    tokenizer_config["model_max_length"] = max_seq_length
    atomic_write_text(directory / "tokenizer.json", files["tokenizer.json"])
    atomic_write_text(directory / "tokenizer_config.json", _json(tokenizer_config))
    atomic_write_text(
        directory / "sentence_bert_config.json",
        _json({"max_seq_length": max_seq_length, "do_lower_case": False}),
    )
    # the key every sentence-transformers version reads (6 renames it silently); pooling_mode
    # as a name, which versions 2 to 6 read without the deprecated pooling_mode_* flags
    pooling = {"word_embedding_dimension": config.d_model, "pooling_mode": model.pooling}
    atomic_write_text(directory / "1_Pooling" / "config.json", _json(pooling))
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(
            [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
        )
    ]
    atomic_write_text(directory / "modules.json", _json(modules))
    return directory


def _json(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


def _check_tensors(tensors: Tensors) -> None:
    if len(tensors) not in (4, 6):
        raise ValueError(
            f"expected 4 tensors (anchor ids, mask, positive ids, mask) or 6 (and negative "
            f"ids, mask), got {len(tensors)}"
        )


def _stack_padded(
    ids: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, T_i) ids and masks, right-padded to the longest T_i and stacked: -> (kB, T) each."""
    longest = max(t.shape[1] for t in ids)
    return (
        torch.cat([F.pad(t, (0, longest - t.shape[1])) for t in ids]),  # pad id 0, masked
        torch.cat([F.pad(m, (0, longest - m.shape[1])) for m in masks]),
    )


def _embed(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, device: torch.device, chunk: int
) -> torch.Tensor:
    """(N, T) ids and mask -> (N, D) float32 embeddings on ``device``, ``chunk`` rows a call,
    each chunk cut to its longest text."""
    parts = []
    for start in range(0, ids.shape[0], chunk):
        rows = slice(start, start + chunk)
        part_ids, part_mask = cut_columns((ids[rows], mask[rows]), row_lengths(mask[rows]))
        parts.append(model(part_ids.to(device), part_mask.to(device)).float())  # -> (b, D)
    return torch.cat(parts)
