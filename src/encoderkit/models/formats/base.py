"""What a foreign weight format is: the :class:`Format` record each family's module fills in
(its config.json ``model_type``, its key map, its config translation both ways, our model class),
so that loading and saving dispatch on the record and a new family is one new module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from torch import nn

from encoderkit.layers.config import EncoderConfig
from encoderkit.models.formats.keymap import KeyMap

ConfigT = TypeVar("ConfigT", bound=EncoderConfig)
ConfigT_co = TypeVar("ConfigT_co", bound=EncoderConfig, covariant=True)
ModelT = TypeVar("ModelT", bound=nn.Module)


class ConfigFromHF(Protocol[ConfigT_co]):
    def __call__(self, hf: dict[str, Any], *, has_pooler: bool) -> ConfigT_co: ...


@dataclass(frozen=True)
class Format(Generic[ConfigT, ModelT]):
    """One model family in the Hugging Face layout, and our model that holds its weights."""

    model_type: str  # config.json's "model_type", which load_pretrained dispatches on
    keymap: KeyMap
    config: type[ConfigT]
    model: type[ModelT]  # built from a ``config``; save_pretrained dispatches on this class
    config_from_hf: ConfigFromHF[ConfigT]
    config_to_hf: Callable[[ConfigT], dict[str, Any]]
