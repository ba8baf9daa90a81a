"""Scaled dot-product attention (Vaswani et al. 2017, section 3.2.1):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V                          (eq. 1)

Shape legend: B batch, H heads, T tokens (queries), S keys (S == T in self-attention), K head
width.

Two paths compute the same thing. ``"math"`` is the formula written out: it is the executable
spec and the test oracle. ``"fused"`` calls ``torch.nn.functional.scaled_dot_product_attention``,
which dispatches to flash / memory-efficient kernels. ``"auto"`` means fused. The same attention
on packed tokens is :mod:`encoderkit.layers.varlen`'s; the multi-head layer around it is
:mod:`encoderkit.layers.self_attention`'s.

A query row with no key to attend to (an all-padding sequence, or a pattern that forbids every
key) outputs exactly 0 with gradient 0 on every path, never NaN: such rows are given every key
before the softmax (so nothing divides 0 by 0) and zeroed afterwards.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from encoderkit.utils.checks import check_choice, check_probability

Backend = Literal["auto", "math", "fused"]
BACKENDS: tuple[str, ...] = ("auto", "math", "fused")


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backend: Backend = "auto",
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k) + mask) V for q (B, H, T, K), k and v (B, H, S, K).

    ``mask`` is bool (True = may attend) or floating (added to the scores), broadcastable to
    (B, H, T, S); build it with :func:`encoderkit.layers.masks.make_attention_mask`.
    ``dropout_p`` drops attention probabilities: callers pass 0.0 outside training (as the
    modules here do).
    """
    check_choice("backend", backend, BACKENDS)
    check_probability("dropout_p", dropout_p)
    _check_qkv(q, k, v)
    return attend(q, k, v, mask, dropout_p, backend)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    backend: Backend,
) -> torch.Tensor:
    """:func:`scaled_dot_product_attention` on arguments already checked (its callers here)."""
    if backend == "math":
        probs = attention_weights(q, k, mask)
        if dropout_p > 0.0:
            probs = F.dropout(probs, dropout_p)
        return probs @ v  # (B, H, T, S) @ (B, H, S, K) -> (B, H, T, K)
    mask, has_key = _open_empty_rows(mask, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out if has_key is None else out.masked_fill(~has_key, 0.0)


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The attention probabilities softmax(Q K^T / sqrt(d_k) + mask): (B, H, T, S).

    Rows with no key to attend to are all zero. The scores and the softmax are computed in
    float32 at least and the probabilities returned in q's dtype: half precision q . k overflows
    fp16 (|q . k| > 65504, e.g. entries of 1e3 in 64 dimensions) and keeps too few digits in bf16
    for the softmax, whose result depends on differences between scores.
    """
    _check_qkv(q, k, k)
    compute = torch.promote_types(q.dtype, torch.float32)
    # In q's dtype first, as the fused path gets it: -1e9 is -inf in fp16 on both paths
    mask, has_key = _open_empty_rows(mask, q.dtype)
    # .to() copies nothing for float32 and float64
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(compute)
    probs = scores.softmax(dim=-1).to(q.dtype)  # (B, H, T, S)
    return probs if has_key is None else probs.masked_fill(~has_key, 0.0)


def _open_empty_rows(
    mask: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Let rows that may attend to nothing see every key; return the mask and which rows had keys.

    The caller zeroes the rows where ``has_key`` is False, so their output and gradient are 0.
    """
    if mask is None:
        return None, None
    if mask.dim() != 4:
        raise ValueError(
            f"mask must be 4-D, broadcastable to (B, H, T, S), got shape {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        has_key = mask.any(dim=-1, keepdim=True)  # (B|1, H|1, T|1, 1)
        return mask | ~has_key, has_key
    if not mask.is_floating_point():
        raise TypeError(f"mask must be bool or floating, got dtype {mask.dtype}")
    mask = mask.to(dtype)
    has_key = (mask != float("-inf")).any(dim=-1, keepdim=True)
    return mask.masked_fill(~has_key, 0.0), has_key


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, T, K), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"expected q (B, H, T, K) and k, v (B, H, S, K), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
