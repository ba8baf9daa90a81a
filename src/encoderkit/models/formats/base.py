"""What a foreign weight format is: the :class:`Format` record each family's module fills in
(its config.json ``model_type``, its key map, its config translation both ways, our model class,
and the task classes it has, each a :class:`Task`), so that loading and saving dispatch on the
record and a new family is one new module."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from torch import nn

from encoderkit.layers.config import EncoderConfig
from encoderkit.models.formats.keymap import KeyMap, Sources
from encoderkit.models.heads import HeadConfig

ConfigT = TypeVar("ConfigT", bound=EncoderConfig)
ConfigT_co = TypeVar("ConfigT_co", bound=EncoderConfig, covariant=True)
ModelT = TypeVar("ModelT", bound=nn.Module)

# Our task models, by what they predict: SequenceClassifier, TokenClassifier, MaskedLM,
# ImageClassifier.
TaskKind = Literal[
    "sequence_classification", "token_classification", "masked_lm", "image_classification"
]


class ConfigFromHF(Protocol[ConfigT_co]):
    def __call__(self, hf: dict[str, Any], *, has_pooler: bool) -> ConfigT_co: ...


def no_head_fields(head: HeadConfig) -> dict[str, Any]:
    """A head that config.json does not describe: it writes no field."""
    return {}


@dataclass(frozen=True)
class Task:
    """One task class of a family in the Hugging Face layout (``BertForSequenceClassification``,
    ...) and how it maps onto our task model of ``kind``.

    ``keys`` maps the head's parameters, ours (relative to the task model: ``head.fc.weight``)
    <- theirs (as in the file: ``classifier.weight``); the encoder's come from the family's
    :class:`KeyMap`, under its ``model_prefix``. ``head_from_hf`` reads the head's layers from
    config.json (raising a ``PretrainedError`` naming a field it cannot honour);
    ``head_to_hf`` writes the fields that describe ``head``. Saving refuses a head that does not
    read back as itself, so a head the class cannot express is never written.
    """

    architecture: str  # config.json's architectures[0], which load_pretrained dispatches on
    kind: TaskKind
    keys: Mapping[str, Sources]
    head_from_hf: Callable[[dict[str, Any]], HeadConfig]
    head_to_hf: Callable[[HeadConfig], dict[str, Any]] = no_head_fields
    pooler: bool = False  # whether the class keeps the encoder's pooler (BERT's classifier)
    # regexes of head keys some files hold that nothing uses: tied copies (the decoder weight),
    # other pre-training heads (BERT's next-sentence head in BertForMaskedLM checkpoints)
    dropped: tuple[str, ...] = ()
    # keyword arguments of our task model that tell this class from another of the same kind
    # ({"distillation_head": True}): passed when loading; when saving, the first task of the
    # model's kind whose options all equal the model's attributes is written
    options: dict[str, Any] = field(default_factory=dict)
    # config.json's field holding a sequence classifier's pooling, "cls" or "mean" (ModernBERT's
    # classifier_pooling); None: the class pools [CLS] only
    pooling_field: str | None = None


@dataclass(frozen=True)
class Format(Generic[ConfigT, ModelT]):
    """One model family in the Hugging Face layout, and our model that holds its weights."""

    model_type: str  # config.json's "model_type", which load_pretrained dispatches on
    keymap: KeyMap
    config: type[ConfigT]
    model: type[ModelT]  # built from a ``config``; save_pretrained dispatches on this class
    config_from_hf: ConfigFromHF[ConfigT]
    config_to_hf: Callable[[ConfigT], dict[str, Any]]
    name: str = ""  # the family's name in messages ("BERT"); default: model_type
    # config.json's architectures for the bare encoder ("BertModel"); a family that leaves it
    # unset loads any class that is not one of its tasks as the bare encoder
    base_architecture: str = ""
    tasks: tuple[Task, ...] = field(default=())

    @property
    def title(self) -> str:
        return self.name or self.model_type

    def architectures(self) -> list[str]:
        """Every class name this family loads: the bare encoder's first, then its tasks'."""
        return [a for a in (self.base_architecture, *(t.architecture for t in self.tasks)) if a]

    def task_named(self, architecture: str) -> Task | None:
        return next((t for t in self.tasks if t.architecture == architecture), None)

    def task_for(self, kind: TaskKind, model: object) -> Task | None:
        """The class that writes ``model``, a task model of ``kind`` (see ``Task.options``)."""
        return next(
            (
                t
                for t in self.tasks
                if t.kind == kind
                and all(getattr(model, k, None) == v for k, v in t.options.items())
            ),
            None,
        )
