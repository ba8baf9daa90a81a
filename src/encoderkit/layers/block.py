"""The encoder block: self-attention and feed-forward, each wrapped in residual + LayerNorm.

Post-norm (Vaswani et al. 2017, section 3.1; BERT) normalises after each residual sum; pre-norm
(Xiong et al. 2020; ViT, GPT-2) normalises each sublayer's input and leaves the residual stream
untouched, which trains deep stacks without warm-up tricks but needs a final LayerNorm (see
``Encoder``).

The same forward runs on packed tokens (N, D) given a ``Packing`` (see
:mod:`encoderkit.layers.packing`): every step but attention works on each position alone.

Shape legend: B batch, T tokens, N packed real tokens, D model width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.layers.attention import Backend
from encoderkit.layers.feedforward import Activation, FeedForward
from encoderkit.layers.masks import padding_mask_bool
from encoderkit.layers.packing import Packing
from encoderkit.layers.positions import PositionEncoding
from encoderkit.layers.self_attention import MultiHeadSelfAttention
from encoderkit.utils.checks import (
    check_bool,
    check_hidden_states,
    check_input_dtype,
    check_packed_tokens,
    check_probability,
)


class EncoderBlock(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        activation: Activation = "gelu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.1,
        bias: bool = True,
        attention_backend: Backend = "auto",
        ff_dropout: float = 0.0,
        qkv_bias: bool = True,
        attention_norm: bool = True,
        position_encoding: PositionEncoding = "none",
        rope_base: float = 10000.0,
        window: int | None = None,
    ) -> None:
        """``ff_dropout`` drops the feed-forward's hidden activations: 0 in the paper and BERT,
        ``dropout`` in ``nn.TransformerEncoderLayer``. ``attention_norm=False`` (pre-norm only)
        feeds attention the residual stream as it comes: ModernBERT's first layer, whose input
        is the embeddings' LayerNorm already. ``position_encoding`` ("rotary" with
        ``rope_base``, or "alibi") and ``window`` are the attention's, see
        :class:`MultiHeadSelfAttention`."""
        super().__init__()
        check_probability("dropout", dropout)
        check_bool("attention_norm", attention_norm)
        if not attention_norm and not norm_first:
            raise ValueError(
                "attention_norm=False leaves out a pre-norm block's first LayerNorm, so it needs "
                "norm_first=True; a post-norm block's norm1 normalises the residual sum"
            )
        self.d_model = d_model
        self.norm_first = norm_first
        self.attn = MultiHeadSelfAttention(
            d_model,
            n_heads,
            attention_dropout,
            bias=bias,
            backend=attention_backend,
            qkv_bias=qkv_bias,
            position_encoding=position_encoding,
            rope_base=rope_base,
            window=window,
        )
        self.ff = FeedForward(d_model, d_ff, activation, ff_dropout, bias=bias)
        self.norm1: nn.Module = (
            nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
            if attention_norm
            else nn.Identity()
        )
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D), masks as in :mod:`encoderkit.layers.masks`; or packed tokens
        x (N, D) -> (N, D) given ``packing``.

        Padded positions of x (``attention_mask`` False) are read as zeros, so no value there,
        NaN and inf included, changes any output.
        """
        if packing is None:
            B, T, _ = check_hidden_states(x, self.d_model).shape
        else:
            check_packed_tokens(x, self.d_model, packing.num_tokens)
        check_input_dtype(x, self.attn.qkv.weight.dtype)
        if packing is None and attention_mask is not None:
            # Attention gets the (B, T) mask as well as the pattern: positions count real tokens
            attention_mask = real = padding_mask_bool(attention_mask, B, T)
            # Zeroed here, not only inside attention: the residual stream carries x past it, and
            # NaN left there reaches the real tokens' gradients through LayerNorm's backward.
            x = x.masked_fill(~real[..., None], 0.0)  # (B, T) -> (B, T, 1)

        def attn(h: torch.Tensor) -> torch.Tensor:
            return self.attn(h, attention_mask, attn_mask, packing)

        if self.norm_first:
            x = x + self.drop(attn(self.norm1(x)))
            x = x + self.drop(self.ff(self.norm2(x)))
        else:
            x = self.norm1(x + self.drop(attn(x)))
            x = self.norm2(x + self.drop(self.ff(x)))
        return x

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> EncoderBlock:
        """Copy a ``torch.nn.TransformerEncoderLayer`` (either norm placement, relu or gelu).

        Our blocks always take (B, T, D); a layer built with ``batch_first=False`` takes
        (T, B, D), so transpose its inputs. Its ``src_key_padding_mask`` (True = padding) becomes
        our ``attention_mask = ~src_key_padding_mask`` (True = real token).
        """
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"expected nn.TransformerEncoderLayer, got {type(layer).__name__}")
        sa = layer.self_attn
        if not sa._qkv_same_embed_dim:
            raise ValueError("expected self-attention with kdim == vdim == d_model")
        block = cls(
            sa.embed_dim,
            sa.num_heads,
            layer.linear1.out_features,
            dropout=layer.dropout.p,
            activation=torch_activation_name(layer.activation),
            norm_first=layer.norm_first,
            layer_norm_eps=layer.norm1.eps,
            attention_dropout=sa.dropout,
            bias=sa.in_proj_bias is not None,
            ff_dropout=layer.dropout.p,  # torch drops the hidden activations too
        ).to(device=sa.in_proj_weight.device, dtype=sa.in_proj_weight.dtype)
        ours = {
            "attn.qkv.weight": sa.in_proj_weight,  # torch packs [W_q; W_k; W_v] in our order
            "attn.qkv.bias": sa.in_proj_bias,
            "attn.proj.weight": sa.out_proj.weight,
            "attn.proj.bias": sa.out_proj.bias,
            "ff.fc1.weight": layer.linear1.weight,
            "ff.fc1.bias": layer.linear1.bias,
            "ff.fc2.weight": layer.linear2.weight,
            "ff.fc2.bias": layer.linear2.bias,
            "norm1.weight": layer.norm1.weight,
            "norm1.bias": layer.norm1.bias,
            "norm2.weight": layer.norm2.weight,
            "norm2.bias": layer.norm2.bias,
        }
        state = {k: v.detach().clone() for k, v in ours.items() if v is not None}
        block.load_state_dict(state, strict=True)
        return block


def torch_activation_name(activation: object) -> Activation:
    """The name of a TransformerEncoderLayer's activation (a function or a module)."""
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu:
        return "gelu"
    if isinstance(activation, nn.GELU):
        return "gelu" if activation.approximate == "none" else "gelu_tanh"
    raise ValueError(f"expected a relu or gelu activation, got {activation!r}")
