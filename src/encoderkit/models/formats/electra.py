"""ELECTRA in the Hugging Face layout (``model_type`` "electra"): its key map, its config.json,
read into and written from our post-norm :class:`TextEncoder` (Clark et al. 2020), and its task
classes.

ELECTRA's encoder is BERT's, without a pooler; its embeddings are ``embedding_size`` wide and,
when that differs from ``hidden_size``, projected to it by a linear layer
(``embeddings_project``, our ``embed_proj``). Loading always sets our ``embedding_size``, equal
to ``d_model`` or not, and BERT refuses a model that has one, so such a model is saved as ELECTRA
again. The discriminator of ElectraForPreTraining loads with ``head=False`` (its replaced-token
head is none of our tasks).

Its heads: the sequence classifier reads [CLS] through dropout, a dense layer, GELU and dropout
(``classifier.dense``, ``classifier.out_proj``); the token classifier is dropout and a linear
layer; the masked-LM head is the generator's (section 3.2): a dense layer down to the embedding
width, GELU, LayerNorm, then the tied embeddings (``generator_lm_head``) plus a bias.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from encoderkit.models.config import TextConfig
from encoderkit.models.formats.base import Format, Task
from encoderkit.models.formats.bert import KEYMAP as BERT_KEYMAP
from encoderkit.models.formats.bert import (
    classification_keys,
    classifier_head,
    classifier_head_to_hf,
    masked_lm_keys,
)
from encoderkit.models.formats.hf_config import (
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
from encoderkit.models.formats.keymap import weight_and_bias
from encoderkit.models.heads import HeadConfig
from encoderkit.models.text import TextEncoder

KEYMAP = dataclasses.replace(
    BERT_KEYMAP,  # BERT's layers, under another prefix
    top={
        "embeddings.tokens.weight": "embeddings.word_embeddings.weight",
        "embeddings.positions.weight": "embeddings.position_embeddings.weight",
        "embeddings.segments.weight": "embeddings.token_type_embeddings.weight",
        **weight_and_bias(
            {"embeddings.norm": "embeddings.LayerNorm", "embed_proj": "embeddings_project"}
        ),
    },
    # derived buffers (task heads, outside the "electra." prefix, are the loader's)
    dropped=(r"embeddings\.(position_ids|token_type_ids)",),
    model_prefix="electra.",
)


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig:
    """Our config from an ELECTRA config.json, with Hugging Face's defaults for absent keys.

    ELECTRA has no pooler: a ``pooler.*`` tensor in the file is reported as unexpected, so
    ``has_pooler`` is not read.
    """
    common = encoder_fields(hf, dropout=0.1, has_pooler=False)
    text = bert_text_fields(hf, pad_default=0)
    with config_errors():
        return TextConfig(
            **common,
            **text,
            norm_first=False,
            max_positions=int_field(hf, "max_position_embeddings", 512),
            embedding_size=int_field(hf, "embedding_size", 128),
        )


def config_to_hf(config: TextConfig) -> dict[str, Any]:
    """The ELECTRA config.json of our config; refuses what ELECTRA cannot express. A model
    without an ``embedding_size`` of its own is written at ``d_model`` (and reads back with
    ``embedding_size=d_model``: the same layers)."""
    reasons = encoder_refusals(config, norm_first=False)
    if config.position_encoding != "learned":
        reasons.append(f"position_encoding must be 'learned' (got {config.position_encoding!r})")
    if config.type_vocab_size == 0:
        reasons.append("type_vocab_size must be at least 1")
    if config.pooler:
        reasons.append("pooler must be False (ELECTRA has none)")
    if not config.qkv_bias:
        reasons.append("qkv_bias must be True")
    if config.window is not None:
        reasons.append(f"window must be None (got {config.window})")
    if config.position_offset != 0:
        reasons.append(f"position_offset must be 0 (got {config.position_offset})")
    refuse("ELECTRA", reasons)
    return encoder_to_hf(config) | {
        "model_type": "electra",
        "architectures": ["ElectraModel"],
        "vocab_size": config.vocab_size,
        "embedding_size": config.embedding_size or config.d_model,
        "max_position_embeddings": config.max_positions,
        "type_vocab_size": config.type_vocab_size,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
    }


def sequence_head(hf: dict[str, Any]) -> HeadConfig:
    """ElectraClassificationHead: dropout, dense, GELU, dropout, out_proj, on [CLS]."""
    return HeadConfig(
        dense=True, activation="gelu", input_dropout=True, dropout=classifier_dropout(hf)
    )


def masked_lm_head(hf: dict[str, Any]) -> HeadConfig:
    """ElectraGeneratorPredictions: dense to embedding_size, GELU (whatever hidden_act says),
    LayerNorm; then generator_lm_head, the tied embeddings, plus a bias."""
    tied_word_embeddings(hf)
    return HeadConfig(dense=True, activation="gelu", norm=True)


TASKS = (
    Task(
        "ElectraForSequenceClassification",
        "sequence_classification",
        {
            **weight_and_bias({"head.transform.dense": "classifier.dense"}),
            **classification_keys("classifier.out_proj"),
        },
        sequence_head,
        classifier_head_to_hf,
    ),
    Task(
        "ElectraForTokenClassification",
        "token_classification",
        classification_keys("classifier"),
        classifier_head,
        classifier_head_to_hf,
    ),
    Task(
        "ElectraForMaskedLM",
        "masked_lm",
        masked_lm_keys(
            "generator_predictions.dense",
            "generator_predictions.LayerNorm",
            "generator_lm_head.bias",
        ),
        masked_lm_head,
        dropped=(r"generator_lm_head\.weight",),  # the tied embedding table
    ),
)

FORMAT = Format(
    model_type="electra",
    keymap=KEYMAP,
    config=TextConfig,
    model=TextEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    name="ELECTRA",
    base_architecture="ElectraModel",
    tasks=TASKS,
)
