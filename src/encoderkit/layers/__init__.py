"""The building blocks, written like the paper: attention and its variable-length kernels, masks,
packing, the feed-forward layer, the block, the encoder, embeddings and position encodings
(learned, sinusoidal, rotary, ALiBi) and local attention.

Nothing here imports from the layers above (models, training, views, the command line).
"""

from encoderkit.layers.alibi import alibi_slopes
from encoderkit.layers.attention import (
    BACKENDS,
    Backend,
    attention_weights,
    scaled_dot_product_attention,
)
from encoderkit.layers.block import EncoderBlock
from encoderkit.layers.config import EncoderConfig
from encoderkit.layers.embeddings import PatchEmbedding, TokenEmbedding, check_token_ids
from encoderkit.layers.encoder import Encoder, init_weights
from encoderkit.layers.feedforward import ACTIVATIONS, Activation, FeedForward
from encoderkit.layers.local import local_attention
from encoderkit.layers.masks import make_attention_mask, padding_mask_bool, padding_to_key_mask
from encoderkit.layers.packing import Packing
from encoderkit.layers.positions import (
    POSITION_ENCODINGS,
    PositionEncoding,
    SinusoidalPositionalEncoding,
    token_positions,
)
from encoderkit.layers.rotary import apply_rotary, rotary_cos_sin
from encoderkit.layers.self_attention import MultiHeadSelfAttention, record_attention
from encoderkit.layers.varlen import (
    VARLEN_KERNELS,
    VarlenKernel,
    packed_attention_weights,
    pick_varlen_kernel,
    varlen_attention,
    varlen_kernel_applies,
)

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "POSITION_ENCODINGS",
    "VARLEN_KERNELS",
    "Activation",
    "Backend",
    "Encoder",
    "EncoderBlock",
    "EncoderConfig",
    "FeedForward",
    "MultiHeadSelfAttention",
    "Packing",
    "PatchEmbedding",
    "PositionEncoding",
    "SinusoidalPositionalEncoding",
    "TokenEmbedding",
    "VarlenKernel",
    "alibi_slopes",
    "apply_rotary",
    "attention_weights",
    "check_token_ids",
    "init_weights",
    "local_attention",
    "make_attention_mask",
    "packed_attention_weights",
    "padding_mask_bool",
    "padding_to_key_mask",
    "pick_varlen_kernel",
    "record_attention",
    "rotary_cos_sin",
    "scaled_dot_product_attention",
    "token_positions",
    "varlen_attention",
    "varlen_kernel_applies",
]
