"""One label per example: digits (images), ListOps and the user's labelled texts.

* ``digits``: scikit-learn's 8 x 8 handwritten digits and a small pre-norm ``VisionEncoder``
  with 2 x 2 patches (16 patches and a class token).
* ``listops``: ListOps from the Long Range Arena, generated locally, and a ``TextEncoder``.
* ``text``: the user's CSV / JSONL of texts and labels (the columns ``text_column`` and
  ``label_column``): classes, scored by accuracy; or, with ``regression``, a float per text (a
  one-output head, mean squared error, scored by Spearman's rank correlation as STS-B is).

Tensors: (images, labels) or (ids, mask, labels). Shape legend: B batch, T tokens, C classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.heads import ImageClassifier, SequenceClassifier
from encoderkit.training.data.splits import shuffled_split
from encoderkit.training.objectives.base import (
    Batch,
    Objective,
    Splits,
    Sums,
    Tensors,
    cut_columns,
    row_lengths,
)

if TYPE_CHECKING:
    from encoderkit.training.config import TrainConfig

VALID_FRACTION = 0.1  # of the training examples (digits, listops) or of the file (text)
DIGIT_CLASSES = [str(d) for d in range(10)]
EVAL_BATCH = 256


class Classify(Objective):
    """Cross-entropy (with ``label_smoothing``) and accuracy; MSE and Spearman for
    ``regression``."""

    name = "classify"

    def __init__(self, cfg: TrainConfig, run: Path | None = None) -> None:
        super().__init__(cfg, run)
        self.metric = "spearman" if cfg.regression else "accuracy"

    # data

    def load(self) -> Splits:
        """Digits and ListOps hold their validation split out of the training one, stratified
        and seeded, so their test splits stay what they were; a text file is split three ways
        (see ``data.text.split3``)."""
        cfg = self.cfg
        if cfg.task == "digits":
            from encoderkit.training.data.digits import load_digits_split

            split = load_digits_split(seed=cfg.seed)
            train, valid = hold_out((split.train_images, split.train_labels), cfg.seed)
            return Splits(train, valid, (split.test_images, split.test_labels), DIGIT_CLASSES)
        if cfg.task == "listops":
            train, valid = hold_out(self.listops_split("train"), cfg.seed)
            return Splits(train, valid, self.listops_split("test"), DIGIT_CLASSES)
        return self._text_splits(self.cfg.data)

    def load_file(self, path: str) -> Tensors:
        """A labelled text file as one split, for ``eval --data``: classes numbered as in training
        (``self.classes``); a label training never saw is an error naming it."""
        from encoderkit.training.data.text import read_labelled_texts, read_values

        columns = self.cfg.text_column, self.cfg.label_column
        if self.cfg.regression:
            texts, values = read_values(Path(path), *columns)
            return (*self.encode(texts), torch.tensor(values, dtype=torch.float32))
        data = read_labelled_texts(Path(path), *columns, min_classes=1)
        unknown = sorted(set(data.classes) - set(self.classes))
        if unknown:
            raise ValueError(
                f"{path}: labels {unknown} are not among the run's classes {self.classes}"
            )
        index = {name: i for i, name in enumerate(self.classes)}
        labels = [index[data.classes[y]] for y in data.labels]
        return (*self.encode(data.texts), torch.tensor(labels))

    def _text_splits(self, data: str | None) -> Splits:
        from encoderkit.training.data.text import read_labelled_texts, read_values, split3

        columns = self.cfg.text_column, self.cfg.label_column
        if not data:
            raise ValueError(
                f"the text task needs --data FILE (a .csv or .jsonl with columns {columns[0]!r} "
                f"and {columns[1]!r})"
            )
        if self.cfg.regression:
            texts, values = read_values(Path(data), *columns)
            train, valid, test = (
                (*self.encode(part), torch.tensor(values, dtype=torch.float32))
                for part, values in _split_values(texts, values, self.cfg.seed)
            )
            return Splits(train, valid, test)
        labelled = read_labelled_texts(Path(data), *columns)
        parts3 = split3(labelled, valid_fraction=VALID_FRACTION, seed=self.cfg.seed)
        train, valid, test = ((*self.encode(p.texts), torch.tensor(p.labels)) for p in parts3)
        return Splits(train, valid, test, labelled.classes)

    def listops_split(self, which: str) -> Tensors:
        from encoderkit.training.data import listops

        cfg = self.cfg
        n, seed = (
            (cfg.listops_train_size, cfg.seed)
            if which == "train"
            else (cfg.listops_test_size, cfg.seed + 1)
        )
        length = cfg.listops_max_length
        return listops.encode(listops.generate(n, max_length=length, seed=seed), length)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (N, T), mask (N, T)) padded to the longest text."""
        from encoderkit.models.sentence import pad_token_ids

        encoded = self.tokenizer.encode_batch([t.strip() for t in texts])
        return pad_token_ids([e.ids for e in encoded])

    # model

    def build_model(self, config: TextConfig | VisionConfig, classes: Sequence[str]) -> nn.Module:
        if isinstance(config, VisionConfig):
            return ImageClassifier(config, len(classes), pooling=self.cfg.pooling)
        if self.cfg.regression:
            return SequenceClassifier(
                config, 1, pooling=self.cfg.pooling, problem_type="regression"
            )
        return SequenceClassifier(config, len(classes), pooling=self.cfg.pooling)

    # steps

    def batch(self, tensors: Tensors, indices: torch.Tensor, device: torch.device) -> Batch:
        """Token rows lose the columns that are padding in every row, so short sequences cost
        what they are, not what the longest example in the data set is."""
        rows = [t[indices] for t in tensors]
        if len(rows) == 3:
            rows[:2] = cut_columns(rows[:2], row_lengths(rows[1]))  # (B, T) -> (B, longest)
        rows = [t.to(device, non_blocking=True) for t in rows]
        names = ("pixels",) if len(rows) == 2 else ("input_ids", "attention_mask")
        return {**dict(zip(names, rows[:-1], strict=True)), "labels": rows[-1]}

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Logits (B, C), or values (B,) for regression, in float32."""
        inputs = [batch[k] for k in ("pixels", "input_ids", "attention_mask") if k in batch]
        out = model(*inputs).float()
        return out.squeeze(-1) if self.cfg.regression else out

    def loss(
        self, model: nn.Module, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, Sums]:
        out, labels = self.forward(model, batch), batch["labels"]
        n = len(labels)
        if self.cfg.regression:
            loss = F.mse_loss(out, labels)
            return loss, {"loss": loss.item() * n, "n": n}
        loss = F.cross_entropy(out, labels, label_smoothing=self.cfg.label_smoothing)
        right = (out.argmax(-1) == labels).sum().item()
        return loss, {"loss": loss.item() * n, "n": n, "accuracy": right}

    def evaluate(
        self, model: nn.Module, tensors: Tensors, device: torch.device
    ) -> dict[str, float]:
        """Mean loss (cross-entropy without smoothing, or MSE) and accuracy, or Spearman's and
        Pearson's correlations for regression."""
        n = len(tensors[-1])
        outs = []
        for start in range(0, n, EVAL_BATCH):
            batch = self.batch(tensors, torch.arange(start, min(n, start + EVAL_BATCH)), device)
            outs.append(self.forward(model, batch).cpu())
        out, labels = torch.cat(outs), tensors[-1]
        if self.cfg.regression:
            return {
                "loss": F.mse_loss(out, labels).item(),
                "spearman": spearman(out, labels),
                "pearson": pearson(out, labels),
            }
        return {
            "loss": F.cross_entropy(out, labels).item(),
            "accuracy": (out.argmax(-1) == labels).float().mean().item(),
        }

    def tokens(self, batch: Batch) -> int:
        if "pixels" in batch:  # patches + class token
            images = batch["pixels"]
            return images.shape[0] * (1 + (images.shape[-1] // 2) * (images.shape[-2] // 2))
        return int(batch["attention_mask"].sum())

    # use

    def inputs(self, items: Sequence[str]) -> Batch:
        """Model inputs from raw items: image files (digits), ListOps expressions, or texts."""
        if self.cfg.task == "digits":
            from encoderkit.training.data.digits import read_digit_image

            return {"pixels": torch.stack([read_digit_image(Path(item)) for item in items])}
        if self.cfg.task == "listops":
            from encoderkit.training.data import listops

            examples = [(listops.tokenize(item), 0) for item in items]
            ids, mask, _ = listops.encode(examples, self.cfg.listops_max_length)
            return {"input_ids": ids, "attention_mask": mask}
        ids, mask = self.encode(items)
        return {"input_ids": ids, "attention_mask": mask}

    def predict(self, model: nn.Module, items: Sequence[str]) -> list[dict[str, Any]]:
        """{"label", "probability", "probabilities"} per item, or {"value"} for regression."""
        out = self.forward(model, self.inputs(items))
        if self.cfg.regression:
            return [{"value": float(v)} for v in out]
        probs = out.softmax(-1)
        records = []
        for p in probs:
            k = int(p.argmax())
            records.append(
                {
                    "label": self.classes[k],
                    "probability": float(p[k]),
                    "probabilities": dict(zip(self.classes, map(float, p), strict=True)),
                }
            )
        return records


def hold_out(tensors: Tensors, seed: int) -> tuple[Tensors, Tensors]:
    """(rest, held out): ``VALID_FRACTION`` of the rows (at least 1), stratified by the labels
    (the last tensor) and the same for the same seed; both keep the rows' order."""
    from encoderkit.training.data.text import holdout_mask

    n = len(tensors[-1])
    if n < 2:
        raise ValueError(
            f"need at least 2 training examples to hold out a validation split, got {n}"
        )
    n_valid = min(max(math.ceil(round(VALID_FRACTION * n, 9)), 1), n - 1)
    mask = torch.from_numpy(holdout_mask(tensors[-1].numpy(), n_valid, seed))
    return tuple(t[~mask] for t in tensors), tuple(t[mask] for t in tensors)


def _split_values(
    texts: list[str], values: list[float], seed: int
) -> list[tuple[list[str], list[float]]]:
    """70 / 10 / 20 seeded split of a regression file (no strata: the labels are floats)."""
    n = len(texts)
    if n < 3:
        raise ValueError(f"need at least 3 examples for train, validation and test, got {n}")
    n_test = max(1, math.ceil(round(0.2 * n, 9)))
    n_valid = min(max(1, math.ceil(round(VALID_FRACTION * n, 9))), n - n_test - 1)
    parts = shuffled_split(n, n_valid, n_test, seed)
    return [([texts[i] for i in p], [values[i] for i in p]) for p in parts]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's on the ranks, ties given their mean rank."""
    return pearson(_ranks(x), _ranks(y))


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else 0.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    _, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # the 0-based rank each distinct value starts at
    mean_rank = first.double() + (counts.double() - 1) / 2
    return mean_rank[inverse]
