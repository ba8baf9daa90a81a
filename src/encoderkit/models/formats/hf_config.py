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
    """Raise one error listing every reason a model cannot be written as a ``kind`` checkpoint."""
    if reasons:
        raise ValueError(
            f"this model cannot be written as a {kind} checkpoint: " + "; ".join(reasons)
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
