"""Training objectives: one module per kind of task, each an :class:`Objective` (see ``base``).

* ``classify``: digits (images), ListOps and the user's labelled texts (classes, or a float value
  with ``regression``);
* ``tokens``: a tag per word, from CoNLL files (named entities, say), scored by entity F1;
* ``pairs``: sentence embeddings from (anchor, positive[, negative]) rows, in-batch negatives;
* ``mlm``: masked-language-model pretraining or domain adaptation on plain text.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from encoderkit.training.objectives.base import Batch, Objective, Splits, Sums, Tensors

if TYPE_CHECKING:
    from encoderkit.training.config import TrainConfig

# task -> (module, class): imported when a run needs it
OBJECTIVES = {
    "digits": ("classify", "Classify"),
    "listops": ("classify", "Classify"),
    "text": ("classify", "Classify"),
    "tokens": ("tokens", "TagTokens"),
    "pairs": ("pairs", "EmbedPairs"),
    "mlm": ("mlm", "MaskedLanguageModel"),
}


def objective_for(cfg: TrainConfig, run: Path | None = None) -> Objective:
    """The objective of ``cfg.task`` (``run``: the directory a trained model is rebuilt from)."""
    if cfg.task not in OBJECTIVES:
        raise ValueError(f"task must be one of {list(OBJECTIVES)}, got {cfg.task!r}")
    module, name = OBJECTIVES[cfg.task]
    cls = getattr(importlib.import_module(f"encoderkit.training.objectives.{module}"), name)
    objective: Objective = cls(cfg, run)
    return objective


__all__ = ["OBJECTIVES", "Batch", "Objective", "Splits", "Sums", "Tensors", "objective_for"]
