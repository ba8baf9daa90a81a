"""ViT in the Hugging Face layout (``model_type`` "vit"): its key map and its config.json, read
into and written from our pre-norm :class:`VisionEncoder` (Dosovitskiy et al. 2021), and its
image classifier (``ViTForImageClassification``: a linear layer on the final [CLS] token).

The image fields and the pooler's are shared with DeiT (:mod:`.deit`), whose checkpoints are
ViT's plus a distillation token.
"""

from __future__ import annotations

from typing import Any

from encoderkit.models.config import VisionConfig
from encoderkit.models.formats.base import Format, Task
from encoderkit.models.formats.bert import classification_keys
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
from encoderkit.models.heads import HeadConfig
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
    # Without qkv_bias our attn.qkv.bias is not built, so its sources are neither expected on
    # loading nor written on saving.
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
    # mask_token serves masked-image pre-training only (task heads, outside the "vit." prefix,
    # are the loader's)
    dropped=(r"embeddings\.mask_token",),
    model_prefix="vit.",
)


def vision_fields(hf: dict[str, Any], *, has_pooler: bool) -> dict[str, Any]:
    """Our :class:`VisionConfig`'s keyword arguments from the config.json fields ViT and DeiT
    share, with Hugging Face's defaults for absent keys. ``encoder_stride`` serves only the
    masked-image-modelling decoder, which we do not load, and is ignored."""
    fields = encoder_fields(hf, dropout=0.0, has_pooler=has_pooler)
    qkv_bias = hf.get("qkv_bias", True)
    if not isinstance(qkv_bias, bool):
        raise PretrainedError(f"config.json: qkv_bias must be a bool, got {qkv_bias!r}")
    if has_pooler:  # without a pooler, Hugging Face reads neither field either
        act = hf.get("pooler_act", "tanh")
        if act != "tanh":
            raise PretrainedError(
                f"config.json: pooler_act must be 'tanh' (our pooler's), got {act!r}"
            )
        size = hf.get("pooler_output_size")  # None or absent: hidden_size, as in transformers
        if size is not None and size != fields["d_model"]:
            raise PretrainedError(
                f"config.json: pooler_output_size must be hidden_size={fields['d_model']} "
                f"(our pooler keeps the width), got {size!r}"
            )
    return fields | {
        "norm_first": True,
        "qkv_bias": qkv_bias,
        "image_size": int_field(hf, "image_size", 224, square=True),
        "patch_size": int_field(hf, "patch_size", 16, square=True),
        "num_channels": int_field(hf, "num_channels", 3),
    }


def vision_refusals(config: VisionConfig) -> list[str]:
    """Why ``config`` cannot be written as a ViT or DeiT checkpoint's encoder; empty when it can."""
    reasons = encoder_refusals(config, norm_first=True)
    if config.window is not None:
        reasons.append("window must be None (ViT attends globally)")
    if not config.first_attention_norm:
        reasons.append("first_attention_norm must be True")
    return reasons


def vision_to_hf(config: VisionConfig) -> dict[str, Any]:
    """config.json's fields ViT and DeiT share (check :func:`vision_refusals` first)."""
    return encoder_to_hf(config) | {
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "qkv_bias": config.qkv_bias,
        "pooler_act": "tanh",
        "pooler_output_size": config.d_model,
    }


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> VisionConfig:
    """Our config from a ViT config.json, with Hugging Face's defaults for absent keys."""
    with config_errors():
        return VisionConfig(**vision_fields(hf, has_pooler=has_pooler))


def config_to_hf(config: VisionConfig) -> dict[str, Any]:
    """The ViT config.json of our config; refuses what ViT cannot express."""
    reasons = vision_refusals(config)
    if config.distillation_token:
        reasons.append("distillation_token must be False (it is DeiT's)")
    refuse("ViT", reasons)
    return vision_to_hf(config) | {"model_type": "vit", "architectures": ["ViTModel"]}


def image_classifier_head(hf: dict[str, Any]) -> HeadConfig:
    """ViT's and DeiT's classifiers are a bare linear layer: no dropout before it, whatever the
    encoder's (so a head of ours with the encoder's dropout is refused on saving, by name)."""
    return HeadConfig(dropout=0.0)


TASKS = (
    Task(
        "ViTForImageClassification",
        "image_classification",
        classification_keys("classifier"),
        image_classifier_head,
    ),
)

FORMAT = Format(
    model_type="vit",
    keymap=KEYMAP,
    config=VisionConfig,
    model=VisionEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    name="ViT",
    base_architecture="ViTModel",
    tasks=TASKS,
)
