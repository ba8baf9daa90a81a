"""The foreign weight formats our models load and save, one module per model family, and the
registry that :mod:`encoderkit.models.pretrained` dispatches on.

A new family is one new module that defines a :class:`Format` named ``FORMAT``, listed here.
Loading picks the format by config.json's ``model_type``; saving picks the first format listed
whose model class the model is an instance of, so the first family listed for a class (BERT for
:class:`TextEncoder`) is the one that class is saved as.
"""

from __future__ import annotations

from typing import Any

from encoderkit.models.formats import bert, vit
from encoderkit.models.formats.base import Format

FORMATS: dict[str, Format[Any, Any]] = {f.model_type: f for f in (bert.FORMAT, vit.FORMAT)}


def format_of_model(model: object) -> Format[Any, Any] | None:
    """The format ``model`` is saved in: the first listed whose model class it is an instance of."""
    return next((f for f in FORMATS.values() if isinstance(model, f.model)), None)


def format_of_config(config: object) -> Format[Any, Any] | None:
    """The format a model of ``config`` is saved in, by the same rule."""
    return next((f for f in FORMATS.values() if isinstance(config, f.config)), None)


__all__ = ["FORMATS", "Format", "format_of_config", "format_of_model"]
