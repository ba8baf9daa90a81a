"""The models people use, built from the layers: BERT-style text and ViT-style image encoders,
task heads, sentence embeddings, and the foreign weight formats they load and save."""

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.heads import (
    ClassificationHead,
    HeadConfig,
    ImageClassifier,
    MaskedLM,
    SequenceClassifier,
    TokenClassifier,
)
from encoderkit.models.pooling import Pooler, Pooling, pool_tokens
from encoderkit.models.pretrained import PretrainedError, load_pretrained, save_pretrained
from encoderkit.models.sentence import SentenceEncoder
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder

__all__ = [
    "ClassificationHead",
    "HeadConfig",
    "ImageClassifier",
    "MaskedLM",
    "Pooler",
    "Pooling",
    "PretrainedError",
    "SentenceEncoder",
    "SequenceClassifier",
    "TextConfig",
    "TextEncoder",
    "TokenClassifier",
    "VisionConfig",
    "VisionEncoder",
    "load_pretrained",
    "pool_tokens",
    "save_pretrained",
]
