"""encoderkit: the Transformer encoder, written like the paper, checked against the references."""

from encoderkit import _moved
from encoderkit.export import check_onnx, export_onnx, export_program
from encoderkit.layers.attention import attention_weights, scaled_dot_product_attention
from encoderkit.layers.block import EncoderBlock
from encoderkit.layers.config import EncoderConfig
from encoderkit.layers.embeddings import PatchEmbedding, TokenEmbedding
from encoderkit.layers.encoder import Encoder
from encoderkit.layers.feedforward import FeedForward
from encoderkit.layers.masks import make_attention_mask
from encoderkit.layers.positions import SinusoidalPositionalEncoding
from encoderkit.layers.self_attention import MultiHeadSelfAttention, record_attention
from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.heads import (
    HeadConfig,
    ImageClassifier,
    MaskedLM,
    SequenceClassifier,
    TokenClassifier,
)
from encoderkit.models.pooling import pool_tokens
from encoderkit.models.pretrained import PretrainedError, load_pretrained, save_pretrained
from encoderkit.models.sentence import SentenceEncoder
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder
from encoderkit.training.api import Run, fit, load_run

__version__ = "0.1.0"

_moved.install()  # the module paths of 0.1 (encoderkit.attention, ...) keep working

__all__ = [
    "Encoder",
    "EncoderBlock",
    "EncoderConfig",
    "FeedForward",
    "HeadConfig",
    "ImageClassifier",
    "MaskedLM",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "PretrainedError",
    "Run",
    "SentenceEncoder",
    "SequenceClassifier",
    "SinusoidalPositionalEncoding",
    "TextConfig",
    "TextEncoder",
    "TokenClassifier",
    "TokenEmbedding",
    "VisionConfig",
    "VisionEncoder",
    "__version__",
    "attention_weights",
    "check_onnx",
    "export_onnx",
    "export_program",
    "fit",
    "load_pretrained",
    "load_run",
    "make_attention_mask",
    "pool_tokens",
    "record_attention",
    "save_pretrained",
    "scaled_dot_product_attention",
]
