"""DistilBERT in the Hugging Face layout (``model_type`` "distilbert"): its key map, its
config.json, read into and written from our post-norm :class:`TextEncoder` (Sanh et al. 2019),
and its task classes.

DistilBERT is BERT without segment embeddings or pooler, under its own names (``dim``,
``n_heads``, ``hidden_dim``, ``q_lin``, ``sa_layer_norm``, ...) and with every LayerNorm's epsilon
fixed at 1e-12. Its ``sinusoidal_pos_embds`` table is stored in the weights like a learned one
and read as one, so outputs are those of the file; it is written back as learned, which
transformers reads into the same table.

Its heads: the sequence classifier reads [CLS] through ``pre_classifier``, ReLU and dropout at
``seq_classif_dropout``; the token classifier is dropout and a linear layer; the masked-LM head is
``vocab_transform``, the encoder's activation, ``vocab_layer_norm``, then the tied embeddings
(``vocab_projector``) plus a bias.
"""

from __future__ import annotations

from typing import Any, cast

from encoderkit.layers.feedforward import Activation
from encoderkit.models.config import TextConfig
from encoderkit.models.formats.base import Format, Task
from encoderkit.models.formats.bert import classification_keys, masked_lm_keys
from encoderkit.models.formats.checkpoint import PretrainedError
from encoderkit.models.formats.hf_config import (
    HF_ACTIVATIONS,
    OUR_ACTIVATIONS,
    config_errors,
    encoder_refusals,
    float_field,
    int_field,
    refuse,
    tied_word_embeddings,
)
from encoderkit.models.formats.keymap import KeyMap, weight_and_bias
from encoderkit.models.heads import HeadActivation, HeadConfig
from encoderkit.models.text import TextEncoder

LAYER_NORM_EPS = 1e-12  # DistilBERT's LayerNorms take no epsilon from config.json

KEYMAP = KeyMap(
    top={
        "embeddings.tokens.weight": "embeddings.word_embeddings.weight",
        "embeddings.positions.weight": "embeddings.position_embeddings.weight",
        **weight_and_bias({"embeddings.norm": "embeddings.LayerNorm"}),
    },
    layer=weight_and_bias(
        {
            "attn.qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
            "attn.proj": "attention.out_lin",
            "norm1": "sa_layer_norm",
            "ff.fc1": "ffn.lin1",
            "ff.fc2": "ffn.lin2",
            "norm2": "output_layer_norm",
        }
    ),
    layer_prefix="transformer.layer",
    # position_ids is a derived buffer (task heads, outside the prefix, are the loader's)
    dropped=(r"embeddings\.position_ids",),
    model_prefix="distilbert.",
    layers_field="n_layers",
)


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig:
    """Our config from a DistilBERT config.json, with Hugging Face's defaults for absent keys.

    DistilBERT has no pooler: a ``pooler.*`` tensor in the file is reported as unexpected, so
    ``has_pooler`` is not read.
    """
    act = activation(hf)
    sinusoidal = hf.get("sinusoidal_pos_embds", False)
    if not isinstance(sinusoidal, bool):
        raise PretrainedError(
            f"config.json: sinusoidal_pos_embds must be a bool, got {sinusoidal!r}"
        )
    with config_errors():
        dim = int_field(hf, "dim", 768)
        # Hugging Face writes "pad_token_id": null for models without one; ours is then 0.
        pad = 0 if hf.get("pad_token_id") is None else int_field(hf, "pad_token_id", 0, 0)
        return TextConfig(
            d_model=dim,
            n_heads=int_field(hf, "n_heads", 12),
            d_ff=int_field(hf, "hidden_dim", 4 * dim),
            n_layers=int_field(hf, "n_layers", 6),
            activation=act,
            layer_norm_eps=LAYER_NORM_EPS,
            dropout=float_field(hf, "dropout", 0.1, probability=True),
            attention_dropout=float_field(hf, "attention_dropout", 0.1, probability=True),
            norm_first=False,
            vocab_size=int_field(hf, "vocab_size", 30522),
            # the sinusoidal table is in the file: read as a learned one, it is exact
            max_positions=int_field(hf, "max_position_embeddings", 512),
            position_encoding="learned",
            type_vocab_size=0,
            pad_token_id=pad,
            pooler=False,
        )


def config_to_hf(config: TextConfig) -> dict[str, Any]:
    """The DistilBERT config.json of our config; refuses what DistilBERT cannot express."""
    reasons = encoder_refusals(config, norm_first=False)
    if config.position_encoding != "learned":
        reasons.append(f"position_encoding must be 'learned' (got {config.position_encoding!r})")
    if config.type_vocab_size != 0:
        reasons.append(
            f"type_vocab_size must be 0 (DistilBERT has no segment embeddings; got "
            f"{config.type_vocab_size})"
        )
    if config.layer_norm_eps != LAYER_NORM_EPS:
        reasons.append(
            f"layer_norm_eps must be {LAYER_NORM_EPS} (DistilBERT's, fixed; got "
            f"{config.layer_norm_eps})"
        )
    if config.pooler:
        reasons.append("pooler must be False (DistilBERT has none)")
    if not config.qkv_bias:
        reasons.append("qkv_bias must be True")
    if config.window is not None:
        reasons.append(f"window must be None (got {config.window})")
    if config.position_offset != 0:
        reasons.append(f"position_offset must be 0 (got {config.position_offset})")
    if config.embedding_size is not None:  # ELECTRA's
        reasons.append(f"embedding_size must be None (got {config.embedding_size})")
    refuse("DistilBERT", reasons)
    return {
        "model_type": "distilbert",
        "architectures": ["DistilBertModel"],
        "dim": config.d_model,
        "n_heads": config.n_heads,
        "hidden_dim": config.d_ff,
        "n_layers": config.n_layers,
        "activation": OUR_ACTIVATIONS[config.activation],
        "dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_positions,
        "sinusoidal_pos_embds": False,
        "pad_token_id": config.pad_token_id,
        "initializer_range": 0.02,
    }


def activation(hf: dict[str, Any]) -> Activation:
    """Our name of config.json's ``activation``, the encoder's and the masked-LM head's."""
    act = hf.get("activation", "gelu")
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        raise PretrainedError(
            f"config.json: activation must be one of {sorted(HF_ACTIVATIONS)}, got {act!r}"
        )
    return cast(Activation, HF_ACTIVATIONS[act])


def sequence_head(hf: dict[str, Any]) -> HeadConfig:
    """pre_classifier, ReLU, dropout at seq_classif_dropout, classifier, on [CLS]."""
    dropout = float_field(hf, "seq_classif_dropout", 0.2, probability=True)
    return HeadConfig(dense=True, activation="relu", dropout=dropout)


def sequence_head_to_hf(head: HeadConfig) -> dict[str, Any]:
    # a head at the encoder's dropout (None) is not written: it reads back as 0.2 and is refused
    return {} if head.dropout is None else {"seq_classif_dropout": head.dropout}


def token_head(hf: dict[str, Any]) -> HeadConfig:
    """Dropout at the encoder's rate, then classifier."""
    return HeadConfig()


def masked_lm_head(hf: dict[str, Any]) -> HeadConfig:
    """vocab_transform, the encoder's activation, vocab_layer_norm (eps 1e-12, as the encoder's)."""
    tied_word_embeddings(hf)
    return HeadConfig(dense=True, activation=cast(HeadActivation, activation(hf)), norm=True)


TASKS = (
    Task(
        "DistilBertForSequenceClassification",
        "sequence_classification",
        {
            **weight_and_bias({"head.transform.dense": "pre_classifier"}),
            **classification_keys("classifier"),
        },
        sequence_head,
        sequence_head_to_hf,
    ),
    Task(
        "DistilBertForTokenClassification",
        "token_classification",
        classification_keys("classifier"),
        token_head,
    ),
    Task(
        "DistilBertForMaskedLM",
        "masked_lm",
        masked_lm_keys("vocab_transform", "vocab_layer_norm", "vocab_projector.bias"),
        masked_lm_head,
        dropped=(r"vocab_projector\.weight",),  # the tied embedding table
    ),
)

FORMAT = Format(
    model_type="distilbert",
    keymap=KEYMAP,
    config=TextConfig,
    model=TextEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    name="DistilBERT",
    base_architecture="DistilBertModel",
    tasks=TASKS,
)
