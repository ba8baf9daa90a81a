"""encoderkit: the Transformer encoder, written like the paper, checked against the references."""

from encoderkit.attention import (
    MultiHeadSelfAttention,
    attention_weights,
    record_attention,
    scaled_dot_product_attention,
)
from encoderkit.block import EncoderBlock
from encoderkit.config import EncoderConfig, TextConfig, VisionConfig
from encoderkit.embeddings import PatchEmbedding, SinusoidalPositionalEncoding, TokenEmbedding
from encoderkit.encoder import Encoder
from encoderkit.feedforward import FeedForward
from encoderkit.masks import make_attention_mask
from encoderkit.models import (
    ImageClassifier,
    SequenceClassifier,
    TextEncoder,
    VisionEncoder,
    pool_tokens,
)
from encoderkit.pretrained import PretrainedError, load_pretrained, save_pretrained
from encoderkit.sentence import SentenceEncoder

__version__ = "0.1.0"

__all__ = [
    "Encoder",
    "EncoderBlock",
    "EncoderConfig",
    "FeedForward",
    "ImageClassifier",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "PretrainedError",
    "SentenceEncoder",
    "SequenceClassifier",
    "SinusoidalPositionalEncoding",
    "TextConfig",
    "TextEncoder",
    "TokenEmbedding",
    "VisionConfig",
    "VisionEncoder",
    "__version__",
    "attention_weights",
    "load_pretrained",
    "make_attention_mask",
    "pool_tokens",
    "record_attention",
    "save_pretrained",
    "scaled_dot_product_attention",
]
