"""The architecture as frozen, keyword-only, validated dataclasses, with presets: the encoder's
(``EncoderConfig``) and the text and vision models' that extend it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from encoderkit.attention import BACKENDS, Backend
from encoderkit.checks import check_choice, check_heads, check_positive_int, check_probability
from encoderkit.embeddings import PositionEncoding
from encoderkit.feedforward import ACTIVATIONS, Activation


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Sizes and choices of an ``Encoder``: n_layers blocks of width d_model with n_heads heads.

    ``layer_norm_eps`` matters for importing weights: BERT and HF ViT use 1e-12, timm / JAX ViT
    1e-6, PyTorch 1e-5. ``bias`` applies to every Linear and LayerNorm, as in ``torch.nn``.

    ``dropout`` applies to each sublayer's output before the residual sum (the paper, section
    5.4); ``ff_dropout`` to the feed-forward's hidden activations, which the paper, BERT and HF
    ViT leave alone (0) and ``nn.TransformerEncoderLayer`` and timm drop at ``dropout``.
    ``padding_free`` runs padded batches on their packed real tokens (see ``Encoder``).
    """

    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int
    dropout: float = 0.1
    attention_dropout: float = 0.1
    ff_dropout: float = 0.0
    activation: Activation = "gelu"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    bias: bool = True
    attention_backend: Backend = "auto"
    padding_free: bool = True

    def __post_init__(self) -> None:
        check_heads(self.d_model, self.n_heads)
        check_positive_int("d_ff", self.d_ff)
        check_positive_int("n_layers", self.n_layers)
        check_probability("dropout", self.dropout)
        check_probability("attention_dropout", self.attention_dropout)
        check_probability("ff_dropout", self.ff_dropout)
        if not isinstance(self.activation, str):  # a list would fail the lookup unhashable
            raise TypeError(f"activation must be a str, got {self.activation!r}")
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("attention_backend", self.attention_backend, BACKENDS)
        for name in ("norm_first", "bias", "padding_free"):
            _check_bool(name, getattr(self, name))
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"layer_norm_eps must be a positive float, got {eps!r}")
        if not math.isfinite(eps):  # inf would normalise every activation to 0
            raise ValueError(f"layer_norm_eps must be a finite positive float, got {eps!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token at sequence length ``seq_len`` (a multiply-add counts 2).

        Per layer: qkv 6 d^2, output projection 2 d^2, feed-forward 4 d f (6 d f when gated),
        attention scores and weighted sum 4 d seq_len. Norms, softmax and activations are left
        out (under 1%). For d_ff = 4 d that is the familiar 24 d^2 + 4 d seq_len per layer, times
        n_layers.
        """
        check_positive_int("seq_len", seq_len)
        d, f = self.d_model, self.d_ff
        ff = (6 if ACTIVATIONS[self.activation][1] else 4) * d * f
        return self.n_layers * (8 * d * d + ff + 4 * d * seq_len)

    # Presets: named constructors for the sizes people know.

    @classmethod
    def bert_base(cls) -> EncoderConfig:
        """BERT-base (Devlin et al. 2019): 12 post-norm layers, 768 wide, 12 heads."""
        return cls(d_model=768, n_heads=12, d_ff=3072, n_layers=12, layer_norm_eps=1e-12)

    @classmethod
    def vit_base(cls) -> EncoderConfig:
        """ViT-B (Dosovitskiy et al. 2021): 12 pre-norm layers, 768 wide, 12 heads, no dropout."""
        return cls(
            d_model=768,
            n_heads=12,
            d_ff=3072,
            n_layers=12,
            dropout=0.0,
            attention_dropout=0.0,
            norm_first=True,
            layer_norm_eps=1e-6,
        )

    @classmethod
    def minilm_l6(cls) -> EncoderConfig:
        """all-MiniLM-L6-v2's encoder: a 6-layer, 384-wide, 12-head post-norm BERT."""
        return cls(d_model=384, n_heads=12, d_ff=1536, n_layers=6, layer_norm_eps=1e-12)

    @classmethod
    def tiny(cls) -> EncoderConfig:
        """A 2-layer, 32-wide model for tests and first experiments."""
        return cls(d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0, attention_dropout=0.0)


@dataclass(frozen=True, kw_only=True)
class TextConfig(EncoderConfig):
    """A BERT-style text encoder: the encoder's sizes plus the vocabulary and positions.

    Defaults are BERT's (uncased WordPiece vocabulary, 512 positions, 2 segments), so
    ``TextConfig.bert_base()`` and ``TextConfig.minilm_l6()`` describe the real models.
    """

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    position_encoding: PositionEncoding = "learned"
    pad_token_id: int = 0
    pooler: bool = False  # BERT's pooler: tanh(W h_[CLS] + b)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("max_positions", self.max_positions)
        if isinstance(self.type_vocab_size, bool) or not (
            isinstance(self.type_vocab_size, int) and self.type_vocab_size >= 0
        ):
            raise ValueError(f"type_vocab_size must be an int >= 0, got {self.type_vocab_size!r}")
        check_choice("position_encoding", self.position_encoding, ("learned", "sinusoidal"))
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int):
            raise TypeError(f"pad_token_id must be an int, got {self.pad_token_id!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id must lie in [0, vocab_size={self.vocab_size}), "
                f"got {self.pad_token_id!r}"
            )
        _check_bool("pooler", self.pooler)


@dataclass(frozen=True, kw_only=True)
class VisionConfig(EncoderConfig):
    """A ViT-style image encoder: the encoder's sizes plus image and patch size.

    Defaults are ViT-B/16's input (224 x 224 RGB, 16 x 16 patches), so ``VisionConfig.vit_base()``
    describes the real model.
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    pooler: bool = False  # HF ViTModel's pooler: tanh(W h_[CLS] + b)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("image_size", self.image_size)
        check_positive_int("patch_size", self.patch_size)
        check_positive_int("num_channels", self.num_channels)
        _check_bool("pooler", self.pooler)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size must be divisible by patch_size, got {self.image_size} "
                f"and {self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
