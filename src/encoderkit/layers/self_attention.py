"""Multi-head self-attention (Vaswani et al. 2017, section 3.2.2):

    MultiHead(X) = Concat(head_1, ..., head_h) W^O,  head_i = Attention(X W_i^Q, X W_i^K, X W_i^V)

and ``record_attention``, which observes every head's probabilities without changing the outputs.

Shape legend: B batch, T tokens, N packed tokens, D model width, H heads, K head width (D / H).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from encoderkit.layers.alibi import alibi_slopes
from encoderkit.layers.attention import (
    BACKENDS,
    Backend,
    attention_weights,
    scaled_dot_product_attention,
)
from encoderkit.layers.local import local_attention_padded
from encoderkit.layers.masks import add_position_pattern, make_attention_mask, padding_mask_bool
from encoderkit.layers.packing import Packing
from encoderkit.layers.positions import POSITION_ENCODINGS, PositionEncoding, token_positions
from encoderkit.layers.rotary import apply_rotary, rotary_cos_sin, rotary_dtype
from encoderkit.layers.varlen import packed_attention_weights, varlen_attention
from encoderkit.utils.checks import (
    check_bool,
    check_choice,
    check_heads,
    check_hidden_states,
    check_input_dtype,
    check_packed_tokens,
    check_positive_int,
    check_probability,
)


class MultiHeadSelfAttention(nn.Module):
    """h heads of width d_model / h: one fused qkv projection, attention, concat, projection W^O.

    Positions inside attention: ``position_encoding="rotary"`` rotates queries and keys by
    their positions (base ``rope_base``, :mod:`encoderkit.layers.rotary`), ``"alibi"`` adds
    -slope_h * |i - j| to the scores (:mod:`encoderkit.layers.alibi`); "learned",
    "sinusoidal" and "none" do nothing here (the embeddings add the first two). ``window``
    makes the layer local: query i attends keys j with |i - j| <= window // 2
    (:mod:`encoderkit.layers.local`), computed in blocks, never as a T x T matrix, except on the
    math backend, with a pattern ``attn_mask`` or while recording maps, which write the band
    out as a mask. Positions count each sequence's real tokens from 0, padded or packed.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        backend: Backend = "auto",
        qkv_bias: bool = True,
        position_encoding: PositionEncoding = "none",
        rope_base: float = 10000.0,
        window: int | None = None,
    ) -> None:
        """``bias`` gives every projection a bias; ``qkv_bias=False`` takes it from the qkv
        projection only (timm's ``qkv_bias=False`` ViTs)."""
        super().__init__()
        check_heads(d_model, n_heads)
        check_probability("dropout", dropout)
        check_choice("backend", backend, BACKENDS)
        check_bool("qkv_bias", qkv_bias)
        check_choice("position_encoding", position_encoding, POSITION_ENCODINGS)
        if window is not None:
            check_positive_int("window", window)
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.backend: Backend = backend
        self.rope_base: float | None = None
        if position_encoding == "rotary":
            if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)):
                raise TypeError(f"rope_base must be a float, got {rope_base!r}")
            if not 1 < rope_base < math.inf:
                raise ValueError(f"rope_base must be a finite float > 1, got {rope_base!r}")
            if self.head_dim % 2:
                raise ValueError(
                    f"rotary positions rotate pairs of dimensions: the head width d_model / "
                    f"n_heads must be even, got {self.head_dim}"
                )
            self.rope_base = float(rope_base)
        self.slopes = alibi_slopes(n_heads) if position_encoding == "alibi" else None
        self.window = window
        # [W^Q; W^K; W^V] for all heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias and qkv_bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # W^O
        self.recorded: list[torch.Tensor] | None = None  # set by record_attention()

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D); or packed tokens x (N, D) -> (N, D) given ``packing``.

        Padded positions of x (``attention_mask`` False) are read as zeros, so no value there,
        NaN and inf included, changes any output.
        """
        if packing is not None:
            if attention_mask is not None or attn_mask is not None:
                raise ValueError("packed tokens take no masks: the packing says what attends")
            return self.forward_packed(x, packing)
        B, T, D = check_hidden_states(x, self.d_model).shape
        check_input_dtype(x, self.qkv.weight.dtype)
        H, K = self.n_heads, self.head_dim
        real = None if attention_mask is None else padding_mask_bool(attention_mask, B, T)
        mask = make_attention_mask(
            real, attn_mask, batch_size=B, seq_len=T, n_heads=H, dtype=x.dtype
        )
        if real is not None:
            # Masking the scores is not enough: 0 * NaN is NaN in probs @ V, and a NaN query row
            # poisons every key's gradient. Zeros keep padded rows finite and content-free.
            x = x.masked_fill(~real[..., None], 0.0)  # (B, T) -> (B, T, 1)
        qkv = self.qkv(x).view(B, T, 3, H, K)  # (B, T, 3D) -> (B, T, 3, H, K)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 3 x (B, H, T, K)
        positions = None  # counted only for a layer that uses them: rotary, ALiBi, a window
        if self.rope_base is not None or self.slopes is not None or self.window is not None:
            positions = token_positions(real, T, x.device)  # (B or 1, T)
        if positions is not None and self.rope_base is not None:
            cos, sin = rotary_cos_sin(positions, K, self.rope_base, rotary_dtype(q.dtype))
            cos, sin = cos[:, None], sin[:, None]  # (B|1, T, K) -> (B|1, 1, T, K)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        slopes = self._slopes(q)
        half = None if self.window is None else self.window // 2
        if self.recorded is not None:
            # Observed beside the output path, so recording never changes the outputs.
            with torch.no_grad():
                full = (
                    mask
                    if positions is None
                    else add_position_pattern(mask, positions, half, slopes, q.dtype)
                )
                self.recorded.append(attention_weights(q, k, full))
        dropout_p = self.dropout if self.training else 0.0
        if half is not None and self.backend != "math" and attn_mask is None:
            out = local_attention_padded(q, k, v, real, half, slopes, dropout_p)
        else:
            if positions is not None:
                mask = add_position_pattern(mask, positions, half, slopes, q.dtype)
            out = scaled_dot_product_attention(q, k, v, mask, dropout_p, self.backend)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, H, T, K) -> (B, T, H*K): concat heads
        return self.proj(out)

    def forward_packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Packed real tokens x (N, D) -> (N, D), each attending within its own sequence."""
        N, D = check_packed_tokens(x, self.d_model, packing.num_tokens).shape
        check_input_dtype(x, self.qkv.weight.dtype)
        H, K = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(N, 3, H, K).unbind(1)  # (N, 3D) -> (N, 3, H, K) -> 3 x (N, H, K)
        if self.rope_base is not None:
            cos, sin = rotary_cos_sin(packing.positions, K, self.rope_base, rotary_dtype(q.dtype))
            cos, sin = cos[:, None], sin[:, None]  # (N, K) -> (N, 1, K)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        slopes = self._slopes(q)
        if self.recorded is not None:
            with torch.no_grad():
                self.recorded.append(packed_attention_weights(q, k, packing, self.window, slopes))
        dropout_p = self.dropout if self.training else 0.0
        out = varlen_attention(
            q, k, v, packing, dropout_p, self.backend, window=self.window, alibi_slopes=slopes
        )
        return self.proj(out.reshape(N, D))  # (N, H, K) -> (N, H*K): concat heads

    def _slopes(self, q: torch.Tensor) -> torch.Tensor | None:
        """ALiBi's slopes (H,) in float32 (float64 for float64 q), or None."""
        if self.slopes is None:
            return None
        compute = torch.promote_types(q.dtype, torch.float32)
        return torch.tensor(self.slopes, dtype=compute, device=q.device)


@contextmanager
def record_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record every attention layer's probabilities during the forwards run inside the block.

    Yields a list that, after one forward, holds one (B, H, T, T) tensor per attention layer in
    the order they ran: post-softmax, pre-dropout probabilities per head (not averaged), detached.
    Columns of padded keys are 0; rows of queries with nothing to attend to are all 0, and so
    are the rows of padded queries when the encoder runs padding-free (it never computes them).

        with record_attention(model) as maps:
            model(x, attention_mask)
    """
    layers = [m for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MultiHeadSelfAttention layer to record")
    if any(layer.recorded is not None for layer in layers):
        raise RuntimeError("record_attention is already active on this model")
    maps: list[torch.Tensor] = []
    for layer in layers:
        layer.recorded = maps
    try:
        yield maps
    finally:
        for layer in layers:
            layer.recorded = None
