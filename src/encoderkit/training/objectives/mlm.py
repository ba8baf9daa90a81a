"""Masked-language modelling on the user's plain text (Devlin et al. 2019, section 3.1):
pretraining from scratch, or domain adaptation of a pretrained encoder, with a tied output layer.

Data: the lines of a text file or folder (see ``data.corpus``), split by line into train /
valid / test, tokenized, and packed into rows of ``text_max_length`` tokens (``--pack``, the
default) or one line per row. The tensors are (ids, doc, word_start): ``doc`` numbers the lines
within a row.

No attention across lines: packing here is a storage and dealing format, not what the encoder
sees. :meth:`MaskedLanguageModel.batch` unpacks the chosen rows into one sequence per line, a
(lines, longest line) padded batch, so each line attends only to itself and its positions
restart at 0, exactly as if it had been run alone (no block-diagonal mask inside a row). What
packing buys is a steady amount of text per row: ``batch_size`` rows hold about
``batch_size * text_max_length`` tokens however short the lines, so a micro-batch holds a
varying number of sequences; the loss is the mean over its masked tokens, and ``n`` in the sums
counts them. The encoder runs padding-free (it packs the real tokens again inside and attends
per sequence), so the padding of the unpacked batch costs no matmul; on the CPU, attention over
many short sequences one by one is the slow part.

Masking is BERT's 80/10/10 (``data.masking``), drawn from the loop's generator, so a resumed run
masks what an uninterrupted one would; ``--whole-word-mask`` chooses whole words. Each line
gets ``mask_rate`` of its tokens rounded down or up at random, so short lines keep the rate on
average (a line may have nothing masked in a step). Evaluation masks each split the same way at
every call, from a generator seeded with the run's seed. The model's head runs only on the
masked positions (``MaskedLM(positions=...)``): (M, V) logits, never (B, T, V). The loss is
plain cross-entropy, without ``label_smoothing`` (BERT uses none), so ``perplexity`` =
exp(loss) is the masked tokens' perplexity.

Shape legend: B sequences (lines), T tokens, M masked tokens, V vocabulary.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.models.config import TextConfig
from encoderkit.models.heads import MaskedLM
from encoderkit.training.data import corpus
from encoderkit.training.data.masking import mask_tokens
from encoderkit.training.objectives.base import Batch, Objective, Splits, Sums, Tensors

if TYPE_CHECKING:
    from encoderkit.models.config import VisionConfig

log = logging.getLogger(__name__)

EVAL_ROWS = 64  # rows per evaluation batch
EVAL_TOKENS = 2_000  # masked tokens an evaluation scores at least, in up to MAX_EVAL_ROUNDS
MAX_EVAL_ROUNDS = 32
TOP_K = 5  # predictions per masked position in predict()
MASK_TOKENS = ("[MASK]", "<mask>")  # BERT's, RoBERTa's
SPLITS = ("train", "valid", "test")


class MaskedLanguageModel(Objective):
    """Predict masked tokens of plain text; the best checkpoint has the best masked accuracy."""

    name = "mlm"
    metric = "masked_accuracy"

    def load(self) -> Splits:
        if not self.cfg.data:
            raise ValueError(
                "the mlm task needs --data: a UTF-8 text file, or a folder of .txt files, one "
                "document per line"
            )
        parts = corpus.split(corpus.read_documents(self.cfg.data), seed=self.cfg.seed)
        train, valid, test = (self._rows(part) for part in parts)
        for label, part, rows in zip(SPLITS, parts, (train, valid, test), strict=True):
            real = int((rows[1] > 0).sum())
            log.info(
                "mlm %s: %d lines, %d rows of up to %d tokens, %d tokens (%.0f%% padding)",
                label, len(part), len(rows[0]), self.cfg.text_max_length, real,
                100 * (1 - real / max(1, rows[0].numel())),
            )  # fmt: skip
        return Splits(train, valid, test, classes=[])

    def load_file(self, path: str) -> Tensors:
        """Every line of a text file (or folder) as one split, for ``eval --data``."""
        return self._rows(corpus.read_documents(path))

    def _rows(self, lines: Sequence[str]) -> Tensors:
        encoded = corpus.encode_lines(self.tokenizer, lines, self.cfg.text_max_length)
        if self.cfg.pack:
            return tuple(corpus.pack(encoded, self.cfg.text_max_length))
        return tuple(corpus.one_per_row(encoded))

    def build_model(self, config: TextConfig | VisionConfig, classes: Sequence[str]) -> nn.Module:
        if not isinstance(config, TextConfig):
            raise TypeError(f"the mlm task needs a TextConfig, got {type(config).__name__}")
        return MaskedLM(config)

    def batch(self, tensors: Tensors, indices: torch.Tensor, device: torch.device) -> Batch:
        """The rows ``indices``, unpacked into one sequence per line: ids, mask and word_start
        (lines, longest line)."""
        ids, doc, word_start = (t[indices] for t in tensors)  # (rows, T) each
        ids, mask, word_start = corpus.unpack(ids, doc, word_start)  # (B, T) each
        return {"ids": ids.to(device), "mask": mask.to(device), "word_start": word_start.to(device)}

    def mask(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked ids (B, T), chosen (B, T) bool) of a batch: BERT's masking of its real,
        non-special tokens at ``mask_rate``."""
        ids = batch["ids"]
        special = self._special.to(ids.device)
        maskable = batch["mask"] & ~torch.isin(ids, special)
        return mask_tokens(
            ids,
            maskable,
            rate=self.cfg.mask_rate,
            mask_id=self.mask_id,
            replacements=self._replacements,
            generator=generator,
            word_start=batch["word_start"] if self.cfg.whole_word_mask else None,
        )

    def loss(
        self, model: nn.Module, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, Sums]:
        masked, chosen = self.mask(batch, generator)
        logits = model(masked, batch["mask"], positions=chosen)  # (M, V)
        target = batch["ids"][chosen]  # (B, T) -> (M,)
        total = F.cross_entropy(logits.float(), target, reduction="sum")
        n = int(chosen.sum())
        right = int((logits.argmax(dim=-1) == target).sum())
        return total / max(n, 1), {
            "loss": float(total.detach()),
            "n": float(n),
            "accuracy": float(right),
        }

    def eval_batches(
        self, tensors: Tensors, device: torch.device
    ) -> Iterator[tuple[Batch, torch.Tensor, torch.Tensor]]:
        """(batch, masked ids, chosen) for a whole split, ``EVAL_ROWS`` rows at a time, masked
        from a generator seeded with the run's seed afresh at each call: the same every time.
        A small split is masked again in further rounds (new masks, same generator), up to
        about ``EVAL_TOKENS`` scored tokens, so that its figures are not a dozen tokens' luck."""
        generator = torch.Generator().manual_seed(self.cfg.seed)
        rows = len(tensors[0])
        expected = self.cfg.mask_rate * int((tensors[1] > 0).sum())  # real tokens per round
        rounds = min(MAX_EVAL_ROUNDS, max(1, math.ceil(EVAL_TOKENS / max(expected, 1.0))))
        for _ in range(rounds):
            for start in range(0, rows, EVAL_ROWS):
                index = torch.arange(start, min(start + EVAL_ROWS, rows))
                batch = self.batch(tensors, index, device)
                masked, chosen = self.mask(batch, generator)
                yield batch, masked, chosen

    def evaluate(
        self, model: nn.Module, tensors: Tensors, device: torch.device
    ) -> dict[str, float]:
        total, right, n = 0.0, 0, 0
        with torch.no_grad():
            for batch, masked, chosen in self.eval_batches(tensors, device):
                logits = model(masked, batch["mask"], positions=chosen)  # (M, V)
                target = batch["ids"][chosen]  # (B, T) -> (M,)
                total += float(F.cross_entropy(logits.float(), target, reduction="sum"))
                right += int((logits.argmax(dim=-1) == target).sum())
                n += int(chosen.sum())
        loss = total / max(n, 1)
        return {
            "loss": loss,
            "masked_accuracy": right / max(n, 1),
            "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
            "masked_tokens": float(n),
        }

    def tokens(self, batch: Batch) -> int:
        return int(batch["mask"].sum())

    def predict(self, model: nn.Module, items: Sequence[str]) -> list[dict[str, Any]]:
        """Fill-mask: for each text, the ``TOP_K`` likeliest tokens and their probabilities at
        each mask token, in order."""
        from encoderkit.models.sentence import pad_token_ids

        mask_token = self.tokenizer.id_to_token(self.mask_id)
        for text in items:
            if mask_token not in text:
                raise ValueError(f"expected a text containing {mask_token} to fill, got {text!r}")
        device = next(model.parameters()).device
        records: list[dict[str, Any]] = []
        for start in range(0, len(items), EVAL_ROWS):
            texts = list(items[start : start + EVAL_ROWS])
            encoded = [e.ids for e in self.tokenizer.encode_batch(texts)]
            for text, ids in zip(texts, encoded, strict=True):
                if self.mask_id not in ids:
                    raise ValueError(
                        f"{mask_token} lies beyond text_max_length={self.cfg.text_max_length} "
                        f"tokens in {text!r}"
                    )
            ids, mask = pad_token_ids(encoded)  # (B, T) each
            chosen = ids == self.mask_id  # (B, T)
            with torch.no_grad():
                logits = model(ids.to(device), mask.to(device), positions=chosen.to(device))
            top = logits.float().softmax(dim=-1).topk(TOP_K, dim=-1)  # (M, V) -> (M, K)
            per_text = chosen.sum(dim=1).tolist()
            probs, tops = top.values.tolist(), top.indices.tolist()
            at = 0
            for text, count in zip(texts, per_text, strict=True):
                masks = [
                    [
                        {"token": self.tokenizer.id_to_token(i), "probability": p}
                        for i, p in zip(tops[m], probs[m], strict=True)
                    ]
                    for m in range(at, at + count)
                ]
                records.append({"text": text, "masks": masks})
                at += count
        return records

    @functools.cached_property
    def _special(self) -> torch.Tensor:
        """The tokenizer's special token ids ([PAD], [UNK], [CLS], [SEP], [MASK]): never chosen
        and never a random replacement."""
        added = self.tokenizer.get_added_tokens_decoder()
        return torch.tensor(sorted(i for i, token in added.items() if token.special))

    @functools.cached_property
    def _replacements(self) -> torch.Tensor:
        vocab = torch.arange(self.tokenizer.get_vocab_size())
        return vocab[~torch.isin(vocab, self._special)]

    @functools.cached_property
    def mask_id(self) -> int:
        """The tokenizer's mask token's id."""
        added = self.tokenizer.get_added_tokens_decoder()
        for i, token in sorted(added.items()):
            if token.special and token.content in MASK_TOKENS:
                return int(i)
        raise ValueError(
            f"the mlm task needs a tokenizer with a mask token ({' or '.join(MASK_TOKENS)}); "
            f"this one's special tokens are {[t.content for t in added.values() if t.special]}"
        )
