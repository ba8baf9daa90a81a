"""DeiT in the Hugging Face layout (``model_type`` "deit"): ViT's key map and config.json plus a
distillation token after [CLS], read into and written from our pre-norm :class:`VisionEncoder`
with ``distillation_token`` (Touvron et al. 2021, "Training data-efficient image transformers &
distillation through attention", section 4), and its image classifiers: on the class token
(``DeiTForImageClassification``), or on both tokens with logits the mean of the class and the
distillation head's (``DeiTForImageClassificationWithTeacher``, section 5).

A DeiT checkpoint without the distillation token (the non-distilled DeiTs) is a ViT checkpoint
and is published as one (``model_type`` "vit").
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from encoderkit.models.config import VisionConfig
from encoderkit.models.formats import vit
from encoderkit.models.formats.base import Format, Task
from encoderkit.models.formats.bert import classification_keys
from encoderkit.models.formats.hf_config import config_errors, refuse
from encoderkit.models.vision import VisionEncoder

KEYMAP = replace(
    vit.KEYMAP,
    top={**vit.KEYMAP.top, "embeddings.dist_token": "embeddings.distillation_token"},
    model_prefix="deit.",
)


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> VisionConfig:
    """Our config from a DeiT config.json, with Hugging Face's defaults for absent keys."""
    with config_errors():
        return VisionConfig(**vit.vision_fields(hf, has_pooler=has_pooler), distillation_token=True)


def config_to_hf(config: VisionConfig) -> dict[str, Any]:
    """The DeiT config.json of our config; refuses what DeiT cannot express."""
    reasons = vit.vision_refusals(config)
    if not config.distillation_token:
        reasons.append("distillation_token must be True (without it, it is a ViT)")
    refuse("DeiT", reasons)
    return vit.vision_to_hf(config) | {"model_type": "deit", "architectures": ["DeiTModel"]}


TASKS = (
    Task(
        "DeiTForImageClassification",
        "image_classification",
        classification_keys("classifier"),
        vit.image_classifier_head,
        options={"distillation_head": False},
    ),
    Task(
        "DeiTForImageClassificationWithTeacher",
        "image_classification",
        {
            **classification_keys("cls_classifier"),
            **{f"distill_head.fc.{p}": f"distillation_classifier.{p}" for p in ("weight", "bias")},
        },
        vit.image_classifier_head,
        options={"distillation_head": True},
    ),
)

FORMAT = Format(
    model_type="deit",
    keymap=KEYMAP,
    config=VisionConfig,
    model=VisionEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    name="DeiT",
    base_architecture="DeiTModel",
    tasks=TASKS,
)
