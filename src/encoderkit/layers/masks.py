"""Attention masks: one convention, one converter.

Two inputs, both optional:

* ``attention_mask`` (B, T), bool or 0/1 integers, **True / 1 = a real token**, False / 0 = padding.
  This is the convention of Hugging Face and of ``F.scaled_dot_product_attention``'s bool masks.
  It is the *opposite* of ``nn.MultiheadAttention`` / ``nn.TransformerEncoder``'s
  ``key_padding_mask``, where True means "ignore": pass ``~key_padding_mask`` when moving over.
* ``attn_mask`` (B or 1, H or 1, T or 1, T), an arbitrary pattern over (query, key) pairs: bool
  (True = may attend) or floating (added to the attention scores; ``-inf`` forbids a pair).

:func:`make_attention_mask` checks both and merges them into the single 4-D mask that every
attention path (math and fused) receives, so every path agrees on what True means.

Rotary positions, windows and ALiBi count positions per sequence
(:func:`encoderkit.layers.positions.token_positions`); :func:`add_position_pattern` writes
windows and ALiBi out as a mask for the paths that take one.

Shape legend: B batch, H heads, T tokens.
"""

from __future__ import annotations

import torch

from encoderkit.layers.alibi import alibi_bias
from encoderkit.layers.local import band_mask
from encoderkit.utils.checks import tracing


def make_attention_mask(
    attention_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    *,
    batch_size: int,
    seq_len: int,
    n_heads: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """Merge a (B, T) padding mask and a 4-D pattern mask into one mask for attention.

    Returns None (no masking), a bool mask (True = may attend) or a float mask of ``dtype`` (added
    to the scores), broadcastable to (B, H, T, T).
    """
    key_mask = pattern = None
    if attention_mask is not None:
        key_mask = padding_to_key_mask(attention_mask, batch_size, seq_len)
    if attn_mask is not None:
        pattern = _check_pattern(attn_mask, batch_size, n_heads, seq_len, dtype)
    if key_mask is None:
        return pattern
    if pattern is None:
        return key_mask
    if pattern.dtype == torch.bool:
        return pattern & key_mask
    return pattern.masked_fill(~key_mask, float("-inf"))


def padding_to_key_mask(
    attention_mask: torch.Tensor, batch_size: int, seq_len: int
) -> torch.Tensor:
    """(B, T) with True/1 = real token -> (B, 1, 1, T) bool, True = this key may be attended to."""
    mask = padding_mask_bool(attention_mask, batch_size, seq_len)
    return mask[:, None, None, :]  # (B, T) -> (B, 1, 1, T)


def padding_mask_bool(attention_mask: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """Check a (B, T) padding mask and return it as bool, True = real token."""
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}"
        )
    if tuple(attention_mask.shape) != (batch_size, seq_len):
        raise ValueError(
            f"attention_mask must have shape (B, T) = ({batch_size}, {seq_len}), "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(
            f"attention_mask must be bool or integer 0/1 (True/1 = real token), got dtype "
            f"{attention_mask.dtype}; pass additive float masks as attn_mask instead"
        )
    if not tracing() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        found = sorted({int(v) for v in attention_mask.unique()[:5]})
        raise ValueError(f"attention_mask must hold only 0 and 1, got values including {found}")
    return attention_mask.bool()


def _check_pattern(
    attn_mask: torch.Tensor, batch_size: int, n_heads: int, seq_len: int, dtype: torch.dtype
) -> torch.Tensor:
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(
            f"attn_mask must be bool (True = may attend) or floating (added to scores), "
            f"got dtype {attn_mask.dtype}"
        )
    allowed = ((batch_size, 1), (n_heads, 1), (seq_len, 1), (seq_len,))
    shape = tuple(attn_mask.shape)
    if len(shape) != 4 or any(size not in ok for size, ok in zip(shape, allowed, strict=True)):
        raise ValueError(
            f"attn_mask must have shape (B or 1, H or 1, T or 1, T) = "
            f"({batch_size} or 1, {n_heads} or 1, {seq_len} or 1, {seq_len}), got {shape}; "
            f"a (T, T) mask can be passed as mask[None, None]"
        )
    return attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(dtype)


def add_position_pattern(
    mask: torch.Tensor | None,
    positions: torch.Tensor,
    half_window: int | None,
    slopes: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """A mask from :func:`make_attention_mask` with local attention's band (|i - j| <=
    ``half_window``) and ALiBi's bias (``slopes`` (H,)) over token ``positions`` (B or 1, T)
    added: the explicit (B, H, T, T) form, which the math path and attention maps use and which
    the blocked kernels of :mod:`encoderkit.layers.local` never build."""
    if half_window is not None:
        band = band_mask(positions, positions, half_window)[:, None]  # (B|1, T, T) -> 4-D
        if mask is None or mask.dtype == torch.bool:
            mask = band if mask is None else mask & band
        else:
            mask = mask.masked_fill(~band, float("-inf"))
    if slopes is not None:
        bias = alibi_bias(positions, positions, slopes).to(dtype)  # (B|1, H, T, T)
        if mask is None:
            mask = bias
        elif mask.dtype == torch.bool:
            mask = bias.masked_fill(~mask, float("-inf"))
        else:
            mask = mask + bias
    return mask
