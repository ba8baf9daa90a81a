"""RoBERTa and XLM-RoBERTa in the Hugging Face layout (``model_type`` "roberta" and
"xlm-roberta"; Liu et al. 2019, Conneau et al. 2020): BERT's encoder under the "roberta."
prefix, read into and written from our post-norm :class:`TextEncoder`, and their task classes.

What sets them apart from BERT: learned positions start at ``pad_token_id + 1`` (our
``position_offset``), so a table of ``max_position_embeddings`` rows holds that many less
``pad_token_id + 1`` tokens; checkpoints usually have one segment (``type_vocab_size`` 1); the
sequence classifier reads the first token (<s>) through its own dense + tanh layer, not a pooler;
the masked-LM head is dense, GELU, LayerNorm, then the tied embeddings.

Hugging Face numbers positions by counting the tokens that are not ``pad_token_id``; we number
them by place in the sequence. The two agree on right-padded batches and unpadded sequences,
which is how tokenizers pad RoBERTa. A left-padded batch, or a ``pad_token_id`` among the real
tokens, shifts Hugging Face's positions and not ours.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from encoderkit.models.config import TextConfig
from encoderkit.models.formats.base import Format, Task
from encoderkit.models.formats.bert import (
    KEYMAP as BERT_KEYMAP,
)
from encoderkit.models.formats.bert import (
    classification_keys,
    classifier_head,
    classifier_head_to_hf,
    masked_lm_keys,
    text_refusals,
    text_to_hf,
)
from encoderkit.models.formats.checkpoint import PretrainedError
from encoderkit.models.formats.hf_config import (
    bert_text_fields,
    classifier_dropout,
    config_errors,
    encoder_fields,
    int_field,
    refuse,
    tied_word_embeddings,
)
from encoderkit.models.formats.keymap import weight_and_bias
from encoderkit.models.heads import HeadConfig
from encoderkit.models.text import TextEncoder

KEYMAP = dataclasses.replace(BERT_KEYMAP, model_prefix="roberta.")


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig:
    """Our config from a RoBERTa config.json, with Hugging Face's defaults for absent keys."""
    common = encoder_fields(hf, dropout=0.1, has_pooler=has_pooler)
    if hf.get("pad_token_id", 1) is None:
        raise PretrainedError(
            "config.json: pad_token_id must be an int >= 0 (RoBERTa's positions start after "
            "it), got None"
        )
    text = bert_text_fields(hf, pad_default=1)
    rows = int_field(hf, "max_position_embeddings", 512)
    offset = text["pad_token_id"] + 1
    if rows <= offset:
        raise PretrainedError(
            f"config.json: max_position_embeddings must exceed pad_token_id + 1 = {offset} "
            f"(RoBERTa's positions start there), got {rows}"
        )
    with config_errors():
        return TextConfig(
            **common, **text, norm_first=False, max_positions=rows, position_offset=offset
        )


def _to_hf(config: TextConfig, name: str, model_type: str, architecture: str) -> dict[str, Any]:
    reasons = text_refusals(config)
    if config.position_offset != config.pad_token_id + 1:
        reasons.append(
            f"position_offset must be pad_token_id + 1 = {config.pad_token_id + 1} (got "
            f"{config.position_offset})"
        )
    refuse(name, reasons)
    return text_to_hf(config) | {
        "model_type": model_type,
        "architectures": [architecture],
        "max_position_embeddings": config.max_positions,
    }


def config_to_hf(config: TextConfig) -> dict[str, Any]:
    """The RoBERTa config.json of our config; refuses what RoBERTa cannot express."""
    return _to_hf(config, "RoBERTa", "roberta", "RobertaModel")


def xlm_config_to_hf(config: TextConfig) -> dict[str, Any]:
    """The XLM-RoBERTa config.json of our config; refuses what it cannot express."""
    return _to_hf(config, "XLM-RoBERTa", "xlm-roberta", "XLMRobertaModel")


def sequence_head(hf: dict[str, Any]) -> HeadConfig:
    """RobertaClassificationHead: dropout, dense, tanh, dropout, out_proj on <s>."""
    return HeadConfig(
        dense=True, activation="tanh", input_dropout=True, dropout=classifier_dropout(hf)
    )


def masked_lm_head(hf: dict[str, Any]) -> HeadConfig:
    """RobertaLMHead: dense, GELU (whatever hidden_act says), layer_norm, tied decoder + bias."""
    tied_word_embeddings(hf)
    return HeadConfig(dense=True, activation="gelu", norm=True)


def tasks(prefix: str) -> tuple[Task, ...]:
    """The task classes ``{prefix}ForX`` ("Roberta", "XLMRoberta"), which share one layout."""
    return (
        Task(
            f"{prefix}ForSequenceClassification",
            "sequence_classification",
            {
                **weight_and_bias({"head.transform.dense": "classifier.dense"}),
                **classification_keys("classifier.out_proj"),
            },
            sequence_head,
            classifier_head_to_hf,
        ),
        Task(
            f"{prefix}ForTokenClassification",
            "token_classification",
            classification_keys("classifier"),
            classifier_head,
            classifier_head_to_hf,
        ),
        Task(
            f"{prefix}ForMaskedLM",
            "masked_lm",
            masked_lm_keys("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
            masked_lm_head,
            dropped=(r"lm_head\.decoder\.(weight|bias)",),  # the tied embeddings and bias
        ),
    )


FORMAT = Format(
    model_type="roberta",
    keymap=KEYMAP,
    config=TextConfig,
    model=TextEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    name="RoBERTa",
    base_architecture="RobertaModel",
    tasks=tasks("Roberta"),
)

XLM_FORMAT = dataclasses.replace(
    FORMAT,
    model_type="xlm-roberta",
    config_to_hf=xlm_config_to_hf,
    name="XLM-RoBERTa",
    base_architecture="XLMRobertaModel",
    tasks=tasks("XLMRoberta"),
)
