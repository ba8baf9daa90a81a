"""The Hugging Face ``config.json`` fields every encoder family shares, both ways.

config.json is a few bytes that can ask for any size, so each value is type- and range-checked
here, so that the error names config.json's field; whether the sizes agree with the weights is
:func:`~encoderkit.models.formats.keymap.map_state`'s to check. Each family's module reads and
writes its own fields on top of these.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from encoderkit.layers.config import EncoderConfig
from encoderkit.models.formats.checkpoint import PretrainedError
from encoderkit.models.heads import PROBLEM_TYPES

# Hugging Face activation names <-> ours.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
OUR_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_pytorch_tanh"}

_REQUIRED: Any = object()


def int_field(
    hf: dict[str, Any],
    key: str,
    default: Any = _REQUIRED,
    minimum: int = 1,
    *,
    square: bool = False,
) -> int:
    """An int from config.json, checked here so that the error names config.json's field.
    ``square`` also takes a pair of equal ints (an image or patch size as [height, width])."""
    if key not in hf:
        if default is _REQUIRED:
            raise PretrainedError(f"config.json lacks {key!r}, which the architecture needs")
        return int(default)
    value = hf[key]
    if isinstance(value, (list, tuple)) and square:
        if len(value) != 2 or value[0] != value[1]:
            raise PretrainedError(f"config.json: {key} must be square, got {value!r}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise PretrainedError(f"config.json: {key} must be {kind}, got {value!r}")
    return value


def float_field(hf: dict[str, Any], key: str, default: float, *, probability: bool) -> float:
    """A finite float from config.json: a dropout rate in [0, 1), or a positive epsilon."""
    value = hf.get(key, default)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if probability and not (ok and 0 <= value < 1):
        raise PretrainedError(f"config.json: {key} must be a float in [0, 1), got {value!r}")
    if not probability and not (ok and value > 0):
        raise PretrainedError(f"config.json: {key} must be a finite float > 0, got {value!r}")
    return float(value)


def encoder_fields(hf: dict[str, Any], *, dropout: float, has_pooler: bool) -> dict[str, Any]:
    """Our encoder's keyword arguments from config.json's shared fields, with Hugging Face's
    defaults for absent keys (``dropout``: the family's default for both dropout rates)."""
    act = hf.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        raise PretrainedError(
            f"config.json: hidden_act must be one of {sorted(HF_ACTIVATIONS)}, got {act!r}"
        )
    return {
        "d_model": int_field(hf, "hidden_size"),
        "n_heads": int_field(hf, "num_attention_heads"),
        "d_ff": int_field(hf, "intermediate_size"),
        "n_layers": int_field(hf, "num_hidden_layers"),
        "activation": HF_ACTIVATIONS[act],
        "layer_norm_eps": float_field(hf, "layer_norm_eps", 1e-12, probability=False),
        "dropout": float_field(hf, "hidden_dropout_prob", dropout, probability=True),
        "attention_dropout": float_field(
            hf, "attention_probs_dropout_prob", dropout, probability=True
        ),
        "pooler": has_pooler,
    }


@contextmanager
def config_errors() -> Iterator[None]:
    """Turn our config's own ``TypeError``/``ValueError`` into a :class:`PretrainedError` that
    says config.json is at fault."""
    try:
        yield
    except (TypeError, ValueError) as e:
        if isinstance(e, PretrainedError):
            raise
        raise PretrainedError(f"config.json does not describe a valid model: {e}") from e


def encoder_refusals(config: EncoderConfig, *, norm_first: bool) -> list[str]:
    """Why ``config``'s encoder cannot be written in a family whose blocks are post-norm
    (``norm_first=False``) or pre-norm; empty when it can."""
    reasons = []
    if config.norm_first != norm_first:
        reasons.append(f"norm_first must be {norm_first}")
    if not config.bias:
        reasons.append("bias must be True")
    if config.activation not in OUR_ACTIVATIONS:
        reasons.append(f"activation must be one of {sorted(OUR_ACTIVATIONS)}")
    return reasons


def refuse(kind: str, reasons: list[str]) -> None:
    """Raise one error listing every reason a model cannot be written in the ``kind`` format."""
    if reasons:
        raise ValueError(
            f"this model cannot be written in the {kind} format: " + "; ".join(reasons)
        )


def encoder_to_hf(config: EncoderConfig) -> dict[str, Any]:
    """config.json's shared fields for ``config``'s encoder (check :func:`encoder_refusals`)."""
    return {
        "hidden_size": config.d_model,
        "num_attention_heads": config.n_heads,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "hidden_act": OUR_ACTIVATIONS[config.activation],
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": 0.02,
    }


def bert_text_fields(hf: dict[str, Any], *, pad_default: int) -> dict[str, Any]:
    """Our text config's vocabulary and segment fields from the config.json fields BERT's
    descendants share (BERT, RoBERTa, XLM-RoBERTa, ELECTRA), refusing what changes the
    architecture beyond what we run: a decoder (causal attention) and relative positions."""
    if hf.get("is_decoder", False) is not False:
        raise PretrainedError(
            f"config.json: is_decoder must be false (encoderkit runs encoders, whose attention "
            f"sees both directions), got {hf['is_decoder']!r}"
        )
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type not in (None, "absolute"):  # null is Hugging Face's default, absolute
        raise PretrainedError(
            f"config.json: position_embedding_type must be 'absolute' (learned absolute "
            f"positions; relative_key and relative_key_query are not supported), got "
            f"{position_type!r}"
        )
    # Hugging Face writes "pad_token_id": null for models without one; ours is then 0.
    pad = hf.get("pad_token_id", pad_default)
    return {
        "vocab_size": int_field(hf, "vocab_size"),
        "type_vocab_size": int_field(hf, "type_vocab_size", 2, 0),
        "pad_token_id": 0 if pad is None else int_field(hf, "pad_token_id", pad_default, 0),
    }


def classifier_dropout(hf: dict[str, Any], key: str = "classifier_dropout") -> float | None:
    """A head's dropout rate from config.json; absent or null: the encoder's (None)."""
    if hf.get(key) is None:
        return None
    return float_field(hf, key, 0.0, probability=True)


def labels_from_hf(hf: dict[str, Any]) -> tuple[int, tuple[str, ...] | None]:
    """(number of classes, their names) from config.json's ``id2label`` (else ``num_labels``,
    else 2, Hugging Face's default). Hugging Face's own names, LABEL_0, LABEL_1, ..., read as
    None: no names."""
    id2label = hf.get("id2label")
    if id2label is None:
        return int_field(hf, "num_labels", 2), None
    if not isinstance(id2label, dict) or not id2label:
        raise PretrainedError(
            f"config.json: id2label must be an object of class index -> name, got {id2label!r}"
        )
    names: dict[int, str] = {}
    for key, name in id2label.items():
        index = int(key) if isinstance(key, str) and key.isdigit() else None
        if index is None or not isinstance(name, str):
            raise PretrainedError(
                f"config.json: id2label must map class indices to names, got {key!r}: {name!r}"
            )
        names[index] = name
    if sorted(names) != list(range(len(names))):
        raise PretrainedError(
            f"config.json: id2label must name classes 0 to {len(names) - 1}, got indices "
            f"{sorted(names)}"
        )
    labels = tuple(names[i] for i in range(len(names)))
    if len(set(labels)) != len(labels):
        raise PretrainedError(f"config.json: id2label must name each class once, got {labels}")
    if "num_labels" in hf and hf["num_labels"] != len(labels):
        raise PretrainedError(
            f"config.json: num_labels must be the {len(labels)} classes of id2label, got "
            f"{hf['num_labels']!r}"
        )
    return len(labels), None if labels == default_labels(len(labels)) else labels


def default_labels(n: int) -> tuple[str, ...]:
    return tuple(f"LABEL_{i}" for i in range(n))


def labels_to_hf(labels: tuple[str, ...] | None, n: int) -> dict[str, Any]:
    """config.json's ``id2label`` and ``label2id`` for ``n`` classes named ``labels``."""
    names = default_labels(n) if labels is None else labels
    return {
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }


def problem_type_from_hf(hf: dict[str, Any]) -> str | None:
    value = hf.get("problem_type")
    if value is not None and value not in PROBLEM_TYPES:
        raise PretrainedError(
            f"config.json: problem_type must be one of {list(PROBLEM_TYPES)} or null, got {value!r}"
        )
    return value


def tied_word_embeddings(hf: dict[str, Any]) -> None:
    """Refuse a masked-LM head whose output layer is not the token embedding table."""
    if hf.get("tie_word_embeddings", True) is not True:
        raise PretrainedError(
            f"config.json: tie_word_embeddings must be true (our masked-LM head's output layer "
            f"is the token embedding table), got {hf['tie_word_embeddings']!r}"
        )
