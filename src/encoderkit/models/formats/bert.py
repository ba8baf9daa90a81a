"""BERT in the Hugging Face layout (``model_type`` "bert", MiniLM included): its key map and its
config.json, read into and written from our post-norm :class:`TextEncoder` (Devlin et al. 2019).
"""

from __future__ import annotations

from typing import Any

from encoderkit.models.config import TextConfig
from encoderkit.models.formats.base import Format
from encoderkit.models.formats.checkpoint import PretrainedError
from encoderkit.models.formats.hf_config import (
    config_errors,
    encoder_fields,
    encoder_refusals,
    encoder_to_hf,
    int_field,
    refuse,
)
from encoderkit.models.formats.keymap import KeyMap, weight_and_bias
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
    # position_ids is a derived buffer; cls.* and classifier.* are task heads of BertForX models.
    dropped=(r"embeddings\.position_ids", r"cls\..*", r"classifier\..*"),
    model_prefix="bert.",
)


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig:
    """Our config from a BERT config.json, with Hugging Face's defaults for absent keys."""
    common = encoder_fields(hf, dropout=0.1, has_pooler=has_pooler)
    with config_errors():
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise PretrainedError(
                f"config.json: position_embedding_type must be 'absolute', got "
                f"{hf['position_embedding_type']!r}"
            )
        # Hugging Face writes "pad_token_id": null for models without one; ours is then 0.
        pad = 0 if hf.get("pad_token_id") is None else int_field(hf, "pad_token_id", 0, 0)
        return TextConfig(
            **common,
            norm_first=False,
            vocab_size=int_field(hf, "vocab_size"),
            max_positions=int_field(hf, "max_position_embeddings", 512),
            type_vocab_size=int_field(hf, "type_vocab_size", 2, 0),
            pad_token_id=pad,
        )


def config_to_hf(config: TextConfig) -> dict[str, Any]:
    """The BERT config.json of our config; refuses what BERT cannot express."""
    reasons = encoder_refusals(config, norm_first=False)
    if config.position_encoding != "learned":
        reasons.append("position_encoding must be 'learned'")
    if config.type_vocab_size == 0:
        reasons.append("type_vocab_size must be at least 1")
    refuse("BERT", reasons)
    return encoder_to_hf(config) | {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_positions,
        "type_vocab_size": config.type_vocab_size,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
    }


FORMAT = Format(
    model_type="bert",
    keymap=KEYMAP,
    config=TextConfig,
    model=TextEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
)
