"""The foreign weight formats our models load and save, one module per model family, and the
registry that :mod:`encoderkit.models.pretrained` dispatches on.

A new family is one new module that defines a :class:`Format` named ``FORMAT`` (with its task
classes, each a :class:`Task`), listed here. Loading picks the format by config.json's
``model_type``. Saving writes the family asked for by name, or else the first format listed
whose model class fits and whose config translation and task head accept the model: each
family refuses what it cannot express exactly, so a plain text encoder is written as BERT, one
whose positions start after the padding index as RoBERTa. Of two families that accept the same
models (RoBERTa and XLM-RoBERTa), the one listed first is the default.
"""

from __future__ import annotations

from typing import Any

from encoderkit.models.formats import bert, deit, distilbert, electra, modernbert, roberta, vit
from encoderkit.models.formats.base import Format, Task

FORMATS: dict[str, Format[Any, Any]] = {
    f.model_type: f
    for f in (
        bert.FORMAT,
        roberta.FORMAT,
        roberta.XLM_FORMAT,
        distilbert.FORMAT,
        electra.FORMAT,
        modernbert.FORMAT,
        vit.FORMAT,
        deit.FORMAT,
    )
}

__all__ = ["FORMATS", "Format", "Task"]
