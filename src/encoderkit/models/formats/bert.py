"""BERT in the Hugging Face layout (``model_type`` "bert", MiniLM included): its key map, its
config.json, read into and written from our post-norm :class:`TextEncoder` (Devlin et al. 2019),
and its task classes: sequence classification on the pooler's output, token classification,
and the masked-LM head (section 3.1: dense, activation, LayerNorm, then the tied embeddings).
"""

from __future__ import annotations

from typing import Any, cast

from encoderkit.models.config import TextConfig
from encoderkit.models.formats.base import Format, Task
from encoderkit.models.formats.hf_config import (
    HF_ACTIVATIONS,
    bert_text_fields,
    classifier_dropout,
    config_errors,
    encoder_fields,
    encoder_refusals,
    encoder_to_hf,
    int_field,
    refuse,
    tied_word_embeddings,
)
from encoderkit.models.formats.keymap import KeyMap, Sources, weight_and_bias
from encoderkit.models.heads import HeadActivation, HeadConfig
from encoderkit.models.text import TextEncoder

KEYMAP = KeyMap(
    top={
        "embeddings.tokens.weight": "embeddings.word_embeddings.weight",
        "embeddings.positions.weight": "embeddings.position_embeddings.weight",
        "embeddings.segments.weight": "embeddings.token_type_embeddings.weight",
        **weight_and_bias(
            {"embeddings.norm": "embeddings.LayerNorm", "pooler.dense": "pooler.dense"}
        ),
    },
    layer=weight_and_bias(
        {
            "attn.qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
            "attn.proj": "attention.output.dense",
            "norm1": "attention.output.LayerNorm",
            "ff.fc1": "intermediate.dense",
            "ff.fc2": "output.dense",
            "norm2": "output.LayerNorm",
        }
    ),
    layer_prefix="encoder.layer",
    # position_ids is a derived buffer (task heads, outside the "bert." prefix, are the loader's)
    dropped=(r"embeddings\.position_ids",),
    model_prefix="bert.",
)


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig:
    """Our config from a BERT config.json, with Hugging Face's defaults for absent keys."""
    common = encoder_fields(hf, dropout=0.1, has_pooler=has_pooler)
    with config_errors():
        return TextConfig(
            **common,
            **bert_text_fields(hf, pad_default=0),
            norm_first=False,
            max_positions=int_field(hf, "max_position_embeddings", 512),
        )


def config_to_hf(config: TextConfig) -> dict[str, Any]:
    """The BERT config.json of our config; refuses what BERT cannot express."""
    reasons = text_refusals(config)
    if config.position_offset != 0:
        reasons.append(f"position_offset must be 0 (got {config.position_offset})")
    refuse("BERT", reasons)
    return text_to_hf(config) | {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "max_position_embeddings": config.max_positions,
    }


def text_refusals(config: TextConfig) -> list[str]:
    """Why ``config`` is not a BERT-layout text encoder (BERT, RoBERTa, ...); empty when it is."""
    reasons = encoder_refusals(config, norm_first=False)
    if config.position_encoding != "learned":
        reasons.append(f"position_encoding must be 'learned' (got {config.position_encoding!r})")
    if config.type_vocab_size == 0:
        reasons.append("type_vocab_size must be at least 1")
    if not config.qkv_bias:
        reasons.append("qkv_bias must be True")
    if config.window is not None:
        reasons.append(f"window must be None (got {config.window})")
    if config.embedding_size is not None:  # ELECTRA's
        reasons.append(f"embedding_size must be None (got {config.embedding_size})")
    return reasons


def text_to_hf(config: TextConfig) -> dict[str, Any]:
    """config.json's fields BERT's descendants share, for ``config`` (check text_refusals)."""
    return encoder_to_hf(config) | {
        "vocab_size": config.vocab_size,
        "type_vocab_size": config.type_vocab_size,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
    }


def classifier_head(hf: dict[str, Any]) -> HeadConfig:
    """Dropout and a linear layer (the classifier of BERT's, RoBERTa's token classification)."""
    return HeadConfig(dropout=classifier_dropout(hf))


def classifier_head_to_hf(head: HeadConfig) -> dict[str, Any]:
    return {"classifier_dropout": head.dropout}


def masked_lm_head(hf: dict[str, Any]) -> HeadConfig:
    """BertPredictionHeadTransform: dense, the encoder's activation, LayerNorm."""
    tied_word_embeddings(hf)
    act = cast(HeadActivation, HF_ACTIVATIONS[hf.get("hidden_act", "gelu")])
    return HeadConfig(dense=True, activation=act, norm=True)


def classification_keys(theirs: str) -> dict[str, str]:
    """Our output layer <- ``theirs`` (weight and bias)."""
    return {f"head.fc.{p}": f"{theirs}.{p}" for p in ("weight", "bias")}


def masked_lm_keys(dense: str, norm: str, bias: str) -> dict[str, Sources]:
    """A masked-LM head <- theirs: the transform's dense layer and LayerNorm, and the output
    bias (the output weight is the tied embedding table, mapped with the encoder)."""
    return {
        **weight_and_bias({"head.transform.dense": dense, "head.transform.norm": norm}),
        "head.bias": bias,
    }


TASKS = (
    Task(
        "BertForSequenceClassification",
        "sequence_classification",
        classification_keys("classifier"),
        classifier_head,
        classifier_head_to_hf,
        pooler=True,  # BERT classifies tanh(W h_[CLS] + b), its pooler's output
    ),
    Task(
        "BertForTokenClassification",
        "token_classification",
        classification_keys("classifier"),
        classifier_head,
        classifier_head_to_hf,
    ),
    Task(
        "BertForMaskedLM",
        "masked_lm",
        masked_lm_keys(
            "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm",
            "cls.predictions.bias",
        ),
        masked_lm_head,
        # the decoder is the tied embedding table; BERT's pre-training checkpoints (bert-base-*)
        # also hold the next-sentence head
        dropped=(r"cls\.predictions\.decoder\.(weight|bias)", r"cls\.seq_relationship\..*"),
    ),
)

FORMAT = Format(
    model_type="bert",
    keymap=KEYMAP,
    config=TextConfig,
    model=TextEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    name="BERT",
    base_architecture="BertModel",
    tasks=TASKS,
)
