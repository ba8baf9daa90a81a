"""ViT in the Hugging Face layout (``model_type`` "vit"): its key map and its config.json, read
into and written from our pre-norm :class:`VisionEncoder` (Dosovitskiy et al. 2021).
"""

from __future__ import annotations

from typing import Any

from encoderkit.models.config import VisionConfig
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
from encoderkit.models.vision import VisionEncoder

KEYMAP = KeyMap(
    top={
        "embeddings.cls_token": "embeddings.cls_token",
        "embeddings.pos_embed": "embeddings.position_embeddings",
        **weight_and_bias(
            {
                "embeddings.proj": "embeddings.patch_embeddings.projection",
                "encoder.norm": "layernorm",
                "pooler.dense": "pooler.dense",
            }
        ),
    },
    layer=weight_and_bias(
        {
            "norm1": "layernorm_before",
            "attn.qkv": (
                "attention.attention.query",
                "attention.attention.key",
                "attention.attention.value",
            ),
            "attn.proj": "attention.output.dense",
            "norm2": "layernorm_after",
            "ff.fc1": "intermediate.dense",
            "ff.fc2": "output.dense",
        }
    ),
    layer_prefix="encoder.layer",
    # mask_token serves masked-image pre-training only; classifier.* is ViTForImageClassification's.
    dropped=(r"embeddings\.mask_token", r"classifier\..*"),
    model_prefix="vit.",
)


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> VisionConfig:
    """Our config from a ViT config.json, with Hugging Face's defaults for absent keys."""
    common = encoder_fields(hf, dropout=0.0, has_pooler=has_pooler)
    with config_errors():
        qkv_bias = hf.get("qkv_bias", True)
        if not isinstance(qkv_bias, bool):
            raise PretrainedError(f"config.json: qkv_bias must be a bool, got {qkv_bias!r}")
        if not qkv_bias:
            raise PretrainedError(
                "config.json: qkv_bias=false ViTs are not supported: our qkv has a bias"
            )
        return VisionConfig(
            **common,
            norm_first=True,
            image_size=int_field(hf, "image_size", 224, square=True),
            patch_size=int_field(hf, "patch_size", 16, square=True),
            num_channels=int_field(hf, "num_channels", 3),
        )


def config_to_hf(config: VisionConfig) -> dict[str, Any]:
    """The ViT config.json of our config; refuses what ViT cannot express."""
    refuse("ViT", encoder_refusals(config, norm_first=True))
    return encoder_to_hf(config) | {
        "model_type": "vit",
        "architectures": ["ViTModel"],
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "qkv_bias": True,
    }


FORMAT = Format(
    model_type="vit",
    keymap=KEYMAP,
    config=VisionConfig,
    model=VisionEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
)
