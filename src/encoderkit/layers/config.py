"""The encoder's architecture as a frozen, keyword-only, validated dataclass with presets,
``EncoderConfig``; the text and vision models' configs extend it (:mod:`encoderkit.models.config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from encoderkit.layers.attention import BACKENDS, Backend
from encoderkit.layers.feedforward import ACTIVATIONS, Activation
from encoderkit.layers.positions import POSITION_ENCODINGS, PositionEncoding
from encoderkit.utils.checks import (
    check_bool,
    check_choice,
    check_heads,
    check_positive_int,
    check_probability,
)


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Sizes and choices of an ``Encoder``: n_layers blocks of width d_model with n_heads heads.

    ``layer_norm_eps`` matters for importing weights: BERT and HF ViT use 1e-12, timm / JAX ViT
    1e-6, PyTorch 1e-5. ``bias`` applies to every Linear and LayerNorm, as in ``torch.nn``.

    ``dropout`` applies to each sublayer's output before the residual sum (the paper, section
    5.4); ``ff_dropout`` to the feed-forward's hidden activations, which the paper, BERT and HF
    ViT leave alone (0) and ``nn.TransformerEncoderLayer`` and timm drop at ``dropout``.
    ``padding_free`` runs padded batches on their packed real tokens (see ``Encoder``).

    ``qkv_bias`` (with ``bias``) gives the qkv projection a bias: HF ViT has one, timm's
    ``qkv_bias=False`` ViTs and some BEiT-style checkpoints do not.

    Positions: ``position_encoding`` is the model's one choice. "learned" and "sinusoidal" are
    added to the input by the text and vision models' embeddings (a bare ``Encoder`` takes its
    input as given); "rotary" (RoPE, Su et al. 2021, base ``rope_base``) rotates queries and keys
    inside attention, and "alibi" (Press et al. 2022) adds -slope_h * |i - j| to the scores; both
    restart at 0 in each sequence, padded or packed, and have no length limit. "none" adds nothing.

    Local attention: with ``window`` set, a query at position i attends only to keys j with
    |i - j| <= window // 2 (ModernBERT's ``local_attention``), except in global layers: layer l
    is global when ``global_every`` > 0 and l % global_every == 0 (ModernBERT: every third,
    layer 0 included). Local layers use ``local_rope_base`` for rotary positions when it is set.
    ``first_attention_norm=False`` leaves the first pre-norm block's attention input
    unnormalised, as ModernBERT does (its embeddings end in a LayerNorm).
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
    qkv_bias: bool = True
    position_encoding: PositionEncoding = "none"
    rope_base: float = 10000.0
    local_rope_base: float | None = None
    window: int | None = None
    global_every: int = 0
    first_attention_norm: bool = True

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
        for name in ("norm_first", "bias", "padding_free", "qkv_bias", "first_attention_norm"):
            check_bool(name, getattr(self, name))
        check_choice("position_encoding", self.position_encoding, POSITION_ENCODINGS)
        for name in ("rope_base", "local_rope_base"):
            base = getattr(self, name)
            if name == "local_rope_base" and base is None:
                continue
            if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
                raise ValueError(f"{name} must be a float > 1, got {base!r}")
            if not math.isfinite(base):
                raise ValueError(f"{name} must be finite, got {base!r}")
        if self.position_encoding == "rotary" and self.head_dim % 2:
            raise ValueError(
                f"rotary positions rotate pairs of dimensions: the head width d_model / n_heads "
                f"must be even, got {self.head_dim}"
            )
        if not self.first_attention_norm and not self.norm_first:
            raise ValueError(
                "first_attention_norm=False leaves the first pre-norm block's attention input "
                "unnormalised: it needs norm_first=True, got norm_first=False"
            )
        if self.window is not None:
            check_positive_int("window", self.window)
        if isinstance(self.global_every, bool) or not (
            isinstance(self.global_every, int) and self.global_every >= 0
        ):
            raise ValueError(f"global_every must be an int >= 0, got {self.global_every!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"layer_norm_eps must be a positive float, got {eps!r}")
        if not math.isfinite(eps):  # inf would normalise every activation to 0
            raise ValueError(f"layer_norm_eps must be a finite positive float, got {eps!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def is_local(self, layer: int) -> bool:
        """Whether ``layer`` (0-based) attends within the window only (see the class doc)."""
        if self.window is None:
            return False
        return not (self.global_every > 0 and layer % self.global_every == 0)

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
