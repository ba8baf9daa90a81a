"""encoderkit: the Transformer encoder, written like the paper, checked against the references."""

from encoderkit.attention import (
    MultiHeadSelfAttention,
    attention_weights,
    record_attention,
    scaled_dot_product_attention,
)
from encoderkit.block import EncoderBlock
from encoderkit.config import EncoderConfig
from encoderkit.encoder import Encoder
from encoderkit.feedforward import FeedForward
from encoderkit.masks import make_attention_mask

__version__ = "0.1.0"

__all__ = [
    "Encoder",
    "EncoderBlock",
    "EncoderConfig",
    "FeedForward",
    "MultiHeadSelfAttention",
    "__version__",
    "attention_weights",
    "make_attention_mask",
    "record_attention",
    "scaled_dot_product_attention",
]
