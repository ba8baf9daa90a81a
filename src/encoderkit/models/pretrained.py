"""Pretrained weights in and out, in the Hugging Face layout (``config.json`` +
``model.safetensors``), for every family in :mod:`encoderkit.models.formats`: each family's key
map, config translation and task classes live in its own module there; loading and saving here
dispatch on them.

Loading picks the family by config.json's ``model_type`` and the model by its
``architectures[0]``: the bare encoder (``BertModel``) gives a :class:`TextEncoder` or
:class:`VisionEncoder`; a task class the family lists (``BertForSequenceClassification``, ...)
gives our task model with its head (see :mod:`encoderkit.models.heads`), or with ``head=False``
the encoder alone, its head's keys dropped.

Saving writes the family named by ``model_type=``, or else the first family listed in
:data:`~encoderkit.models.formats.FORMATS` that can write the model exactly, encoder and head
(BERT for a plain text encoder; RoBERTa for one whose positions start after the padding index).
A model carries no family name: what it computes decides how it can be written.

The config is checked against the weights before anything is allocated: config.json is a few
bytes that can ask for any size, so its values are type-checked, its layer count is compared with
the layers the weights hold, and the shape of every source tensor (read from the safetensors
header, without the data) is compared with the shape our model, built on the meta device, expects.
Only then are tensors read and the real model built, so memory follows the file, not the config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.formats import FORMATS, Format, Task
from encoderkit.models.formats.base import TaskKind
from encoderkit.models.formats.checkpoint import (
    CONFIG,
    WEIGHTS,
    PretrainedError,
    Weights,
    open_weights,
    read_config,
)
from encoderkit.models.formats.hf_config import (
    config_errors,
    labels_from_hf,
    labels_to_hf,
    problem_type_from_hf,
)
from encoderkit.models.formats.keymap import as_tuple, check_layer_count, map_state
from encoderkit.models.heads import (
    HeadConfig,
    ImageClassifier,
    MaskedLM,
    SequenceClassifier,
    TaskModel,
    TokenClassifier,
)
from encoderkit.models.hub_files import CARD_MARK, model_card, tokenizer_json
from encoderkit.models.pooling import Pooling
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder
from encoderkit.utils.files import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

__all__ = [
    "PretrainedError",
    "config_from_hf",
    "config_to_hf",
    "load_pretrained",
    "read_config",
    "save_pretrained",
]

Pretrained = TextEncoder | VisionEncoder | TaskModel
# buffers transformers computes from the config, in every BERT-era checkpoint (see
# _without_derived_buffers)
DERIVED_BUFFERS = re.compile(r"embeddings\.(position_ids|token_type_ids)")
TASK_MODELS: dict[TaskKind, type[nn.Module]] = {
    "sequence_classification": SequenceClassifier,
    "token_classification": TokenClassifier,
    "masked_lm": MaskedLM,
    "image_classification": ImageClassifier,
}


def load_pretrained(path: str | Path, *, allow_pickle: bool = False, head: bool = True) -> Any:
    """Read a Hugging Face-format model directory into our model: the encoder for a base
    checkpoint (``BertModel``), our task model with its head for a task checkpoint the family
    supports (``BertForSequenceClassification``: a :class:`SequenceClassifier`), the encoder
    alone with ``head=False``. Returns a TextEncoder, VisionEncoder, SequenceClassifier,
    TokenClassifier, MaskedLM or ImageClassifier.

    Weights come from ``model.safetensors``. A ``pytorch_model.bin`` is read only when
    ``allow_pickle=True``, and then with ``torch.load(weights_only=True)``.
    """
    if not isinstance(head, bool):
        raise TypeError(f"head must be a bool, got {head!r}")
    directory = Path(path)
    if not directory.is_dir():
        raise PretrainedError(
            f"expected a model directory, got {str(directory)!r}: not a directory"
        )
    source = str(directory)
    hf = read_config(directory / CONFIG)
    fmt = _format_of_type(hf, f"{directory / CONFIG}")
    task = _task_to_load(fmt, hf, head, directory / CONFIG)
    keymap = fmt.keymap
    weights = open_weights(directory, keymap.model_prefix, allow_pickle=allow_pickle)
    pooler = _pooler_sources(fmt)
    if task is None:
        has_pooler = any(k in weights.specs for k in pooler)
        # a task checkpoint's head lies outside the encoder's prefix: drop it
        prefixed = any(name != k for k, name in weights.names.items())
        head_keys = [k for k, name in weights.names.items() if name == k] if prefixed else []
        dropped = keymap.dropped + tuple(re.escape(k) for k in head_keys)
    else:
        has_pooler = task.pooler
        # a class without the pooler ignores one in the file (bert-base-uncased's MaskedLM)
        unused_pooler = () if task.pooler else tuple(re.escape(k) for k in pooler)
        dropped = keymap.dropped + task.dropped + unused_pooler
    weights = _without_derived_buffers(weights, dropped)
    config = fmt.config_from_hf(hf, has_pooler=has_pooler)
    check_layer_count(weights.specs, keymap, config.n_layers, source)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated for what the config asks
            skeleton = _build(fmt, task, config, hf)
    except RuntimeError as e:  # sizes whose product overflows int64, say
        raise PretrainedError(f"{source}: config.json asks sizes no tensor can have ({e})") from e
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    mapping = _mapping(fmt, task, config.n_layers)
    ours = map_state(weights, mapping, dropped, expected, source)
    model = _build(fmt, task, config, hf)  # memory now follows the file
    model.load_state_dict(ours, strict=True)
    return model.eval()


def save_pretrained(
    model: nn.Module,
    path: str | Path,
    *,
    tokenizer: Tokenizer | str | Path | None = None,
    model_type: str | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face-format directory (``model.safetensors`` then
    ``config.json``, each atomically) that ``transformers`` and :func:`load_pretrained` read:
    an encoder as the family's base class (``BertModel``), a task model as its task class
    (``BertForSequenceClassification``, with ``id2label``), and a README.md model card (an
    existing README.md that encoderkit did not write is kept).

    ``tokenizer``, a ``tokenizers.Tokenizer`` or the path of a tokenizer.json, is written as
    tokenizer.json with a tokenizer_config.json naming its special tokens, so that
    ``transformers.AutoTokenizer.from_pretrained(path)`` loads it.

    ``model_type`` names the family to write ("bert", "roberta", "xlm-roberta", ...); by default
    the first family listed that can express the model exactly. What no family can express
    raises a ValueError listing, per family, why.
    """
    encoder, kind = _parts(model)
    tokenizer_files = None if tokenizer is None else tokenizer_json(tokenizer, encoder)
    fmt, hf = _choose_format(model, encoder, kind, model_type)
    task = None if kind is None else fmt.task_for(kind, model)
    ours = model.state_dict()
    theirs: dict[str, torch.Tensor] = {}
    prefix = "" if task is None else fmt.keymap.model_prefix
    for our_key, sources in _mapping(fmt, task, encoder.config.n_layers, prefix).items():
        if our_key not in ours:  # the optional pooler
            continue
        parts = ours[our_key].detach().cpu().chunk(len(sources), dim=0)  # (3D, D) -> 3 x (D, D)
        for source, part in zip(sources, parts, strict=True):
            theirs[source] = part.contiguous().clone()  # own storage: safetensors refuses shares
    directory = Path(path)
    metadata = {"format": "pt", "producer": "encoderkit"}
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(theirs, str(tmp), metadata))
    atomic_write_text(directory / CONFIG, json.dumps(hf, indent=2, sort_keys=True) + "\n")
    for name, text in (tokenizer_files or {}).items():
        atomic_write_text(directory / name, text)
    card = directory / "README.md"
    if card.is_file() and not card.read_text(encoding="utf-8").startswith(CARD_MARK):
        log.info("%s: kept the README.md there, which encoderkit did not write", directory)
    else:
        arch = hf.get("architectures", [fmt.title])[0]
        tokenized = (directory / "tokenizer.json").is_file()
        # transformers' base class builds a pooler the family has and this model lacks
        pooler = kind is not None or encoder.pooler is not None or not _pooler_sources(fmt)
        kind = _parts(model)[1]
        text = model_card(
            model, encoder, kind, arch, path, with_tokenizer=tokenized, with_pooler=pooler
        )
        atomic_write_text(card, text)
    return directory


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig | VisionConfig:
    """Our config from a Hugging Face config.json of any known ``model_type``, with Hugging
    Face's defaults for absent keys.

    Each value is type- and range-checked by the family's module, so that the error names
    config.json's field; whether the sizes agree with the weights is ``map_state``'s to check.
    """
    fmt = _format_of_type(hf, "config.json")
    config: TextConfig | VisionConfig = fmt.config_from_hf(hf, has_pooler=has_pooler)
    return config


def config_to_hf(
    config: TextConfig | VisionConfig, *, model_type: str | None = None
) -> dict[str, Any]:
    """The Hugging Face config.json of an encoder of ``config``, in the family ``model_type`` or
    the first family listed that can express it; refuses what its family cannot express."""
    candidates = [f for f in FORMATS.values() if isinstance(config, f.config)]
    if not candidates:
        names = dict.fromkeys(f.config.__name__ for f in FORMATS.values())
        raise TypeError(f"expected a {' or '.join(names)}, got {type(config).__name__}")
    errors = []
    for fmt in _named(candidates, model_type, type(config).__name__):
        try:
            hf: dict[str, Any] = fmt.config_to_hf(config)
            return hf
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(_none_writes(errors))


# ---- loading ----------------------------------------------------------------------------


def _format_of_type(hf: dict[str, Any], where: str) -> Format[Any, Any]:
    model_type = hf.get("model_type")
    fmt = FORMATS.get(model_type) if isinstance(model_type, str) else None
    if fmt is None:
        known = " or ".join(repr(t) for t in FORMATS)
        raise PretrainedError(f"{where}: model_type must be {known}, got {model_type!r}")
    return fmt


def _task_to_load(
    fmt: Format[Any, Any], hf: dict[str, Any], head: bool, where: Path
) -> Task | None:
    """The task class config.json's ``architectures[0]`` names, or None for the encoder: the
    base class, no class named, or ``head=False``."""
    architectures = hf.get("architectures")
    if architectures is None:
        return None
    if (
        not isinstance(architectures, list)
        or not architectures
        or not all(isinstance(a, str) for a in architectures)
    ):
        raise PretrainedError(
            f"{where}: architectures must be a list of class names, got {architectures!r}"
        )
    name = architectures[0]
    if not head or name == fmt.base_architecture:
        return None
    task = fmt.task_named(name)
    if task is None and fmt.base_architecture:  # a family that names its classes
        raise PretrainedError(
            f"{where}: architectures[0] {name!r} is not supported for model_type "
            f"{fmt.model_type!r}; supported: {', '.join(fmt.architectures())}. Pass head=False "
            f"to load the encoder alone, without the head"
        )
    return task


def _pooler_sources(fmt: Format[Any, Any]) -> tuple[str, ...]:
    """The family's pooler keys in the file (prefix stripped)."""
    return tuple(
        s for ours, theirs in fmt.keymap.top.items() if ours.startswith("pooler.")
        for s in as_tuple(theirs)
    )  # fmt: skip


def _build(
    fmt: Format[Any, Any], task: Task | None, config: TextConfig | VisionConfig, hf: dict[str, Any]
) -> nn.Module:
    """Our model for ``config``: the encoder, or the task model with the head config.json
    describes (its errors name config.json's fields)."""
    if task is None:
        model: nn.Module = fmt.model(config)
        return model
    head = task.head_from_hf(hf)
    with config_errors():
        if task.kind == "masked_lm":
            return MaskedLM(config, head=head, **task.options)  # type: ignore[arg-type]
        n, labels = labels_from_hf(hf)
        if task.kind == "sequence_classification":
            return SequenceClassifier(
                config,  # type: ignore[arg-type]
                n,
                _pooling_from_hf(hf, task.pooling_field),
                head=head,
                labels=labels,
                problem_type=problem_type_from_hf(hf),  # type: ignore[arg-type]
                **task.options,
            )
        if task.kind == "token_classification":
            return TokenClassifier(
                config,  # type: ignore[arg-type]
                n,
                head=head,
                labels=labels,
                **task.options,
            )
        return ImageClassifier(
            config,  # type: ignore[arg-type]
            n,
            head=head,
            labels=labels,
            **task.options,
        )


def _mapping(
    fmt: Format[Any, Any], task: Task | None, n_layers: int, prefix: str = ""
) -> dict[str, tuple[str, ...]]:
    """ours <- theirs for the whole model: the encoder's keys (under ``encoder.`` in a task
    model, and under ``prefix`` in the file), then the head's."""
    encoder = fmt.keymap.expand(n_layers)
    if task is None:
        return encoder
    mapping = {
        f"encoder.{ours}": tuple(prefix + t for t in theirs) for ours, theirs in encoder.items()
    }
    return mapping | {ours: as_tuple(theirs) for ours, theirs in task.keys.items()}


def _without_derived_buffers(weights: Weights, dropped: tuple[str, ...]) -> Weights:
    """``weights`` less the buffers transformers derives from the config (BERT's position ids
    0..T-1, ELECTRA's all-zero segment ids), which older versions saved in every checkpoint:
    dropped silently, where the notice map_state logs is for dropped keys that held weights.
    Only keys the family drops anyway, so a stray one still fails as unexpected."""
    derived = {
        k for k in weights.specs
        if DERIVED_BUFFERS.fullmatch(k) and any(re.fullmatch(p, k) for p in dropped)
    }  # fmt: skip
    specs = {k: v for k, v in weights.specs.items() if k not in derived}
    return dataclasses.replace(weights, specs=specs) if derived else weights


# ---- saving -----------------------------------------------------------------------------


def _parts(model: object) -> tuple[TextEncoder | VisionEncoder, TaskKind | None]:
    """The encoder inside ``model``, and the task kind (None for a bare encoder)."""
    if isinstance(model, (TextEncoder, VisionEncoder)):
        return model, None
    for kind, cls in TASK_MODELS.items():
        if isinstance(model, cls):
            encoder: TextEncoder | VisionEncoder = model.encoder  # type: ignore[assignment]
            return encoder, kind
    names = ["TextEncoder", "VisionEncoder", *(cls.__name__ for cls in TASK_MODELS.values())]
    raise TypeError(
        f"expected a {', '.join(names[:-1])} or {names[-1]}, got {type(model).__name__}"
    )


def _named(
    candidates: list[Format[Any, Any]], model_type: str | None, what: str
) -> list[Format[Any, Any]]:
    if model_type is None:
        return candidates
    for fmt in candidates:
        if fmt.model_type == model_type:
            return [fmt]
    raise ValueError(
        f"model_type must be one of {[f.model_type for f in candidates]} for a {what}, "
        f"got {model_type!r}"
    )


def _choose_format(
    model: nn.Module,
    encoder: TextEncoder | VisionEncoder,
    kind: TaskKind | None,
    model_type: str | None,
) -> tuple[Format[Any, Any], dict[str, Any]]:
    """The family that writes ``model``, and its config.json."""
    candidates = [f for f in FORMATS.values() if isinstance(encoder, f.model)]
    errors = []
    for fmt in _named(candidates, model_type, type(encoder).__name__):
        try:
            return fmt, _config_of(fmt, model, encoder, kind)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(_none_writes(errors))


def _none_writes(errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    return "no family can write this model:\n  " + "\n  ".join(errors)


def _config_of(
    fmt: Format[Any, Any],
    model: nn.Module,
    encoder: TextEncoder | VisionEncoder,
    kind: TaskKind | None,
) -> dict[str, Any]:
    """config.json of ``model`` written as ``fmt``, or a ValueError saying why it cannot be."""
    hf: dict[str, Any] = fmt.config_to_hf(encoder.config)
    if kind is None:
        return hf | ({"architectures": [fmt.base_architecture]} if fmt.base_architecture else {})
    task = fmt.task_for(kind, model)
    if task is None:
        raise ValueError(f"{fmt.title} has no {kind.replace('_', ' ')} class for this model")
    reasons = []
    has_pooler = getattr(encoder, "pooler", None) is not None
    if has_pooler != task.pooler:
        reasons.append(
            f"the encoder must {'have' if task.pooler else 'not have'} a pooler "
            f"(pooler={task.pooler})"
        )
    pooling = getattr(model, "pooling", "cls")
    if kind == "sequence_classification" and task.pooling_field is not None:
        hf[task.pooling_field] = pooling
    elif pooling != "cls":
        reasons.append(f"pooling must be 'cls', got {pooling!r}")
    head = typing.cast(HeadConfig, model.head_config)  # every task model has one
    hf |= task.head_to_hf(head)
    read_back = task.head_from_hf(hf)
    # None means "the encoder's" (dropout, norm eps): compare the rates the model really uses
    want, got = read_back.on(encoder.config), head.on(encoder.config)
    if want != got:
        differ = [
            f"{f.name}={getattr(want, f.name)!r} (got {getattr(got, f.name)!r})"
            for f in dataclasses.fields(HeadConfig)
            if getattr(want, f.name) != getattr(got, f.name)
        ]
        reasons.append(f"its head must have {', '.join(differ)}")
    if reasons:
        raise ValueError(
            f"this model cannot be written as {task.architecture}: " + "; ".join(reasons)
        )
    hf["architectures"] = [task.architecture]
    if kind != "masked_lm":
        n = model.head.fc.out_features  # type: ignore[union-attr]
        hf |= labels_to_hf(model.labels, n)  # type: ignore[arg-type]
    if getattr(model, "problem_type", None) is not None:
        hf["problem_type"] = model.problem_type
    return hf


def _pooling_from_hf(hf: dict[str, Any], key: str | None) -> Pooling:
    """A sequence classifier's pooling: config.json's ``key`` when the class has one, else CLS."""
    pooling = "cls" if key is None else hf.get(key, "cls")
    if pooling not in ("cls", "mean"):
        raise PretrainedError(f"config.json: {key} must be 'cls' or 'mean', got {pooling!r}")
    return typing.cast(Pooling, pooling)
