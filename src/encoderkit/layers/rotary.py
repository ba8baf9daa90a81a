"""Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", section 3.4.2): each query and
key is rotated by an angle proportional to its position, pair of dimensions by pair,

    f(x, m) = x * cos(m theta) + rotate_half(x) * sin(m theta),  theta_i = base^(-2i / K),

so q_m . k_n depends on m - n only: attention sees relative positions, with no table and no
length limit. The dimensions are paired as the two halves of the head, (i, i + K/2), which is the
convention of GPT-NeoX, Llama and transformers' ModernBERT (``rotate_half``), not RoFormer's
interleaved (2i, 2i + 1): checkpoints trained one way need the other's rows permuted.

Positions count each sequence's real tokens from 0, padded or packed, so padding changes nothing.

Shape legend: B batch, H heads, T tokens, N packed tokens, K head width.
"""

from __future__ import annotations

import torch


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(m theta) and sin(m theta) for integer ``positions`` (...,): each (..., K).

    Computed in ``dtype`` (float32, or float64 for a float64 model), the way transformers'
    ``ModernBertRotaryEmbedding`` does in float32, so the two agree to the last bit: angles of
    thousands of radians keep few digits in half precision.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=dtype, device=positions.device) / head_dim
    inv_freq = 1.0 / (base**exponents)  # (K/2,): theta_i
    angles = positions[..., None].to(dtype) * inv_freq  # (...,) -> (..., K/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., K): both halves share theta_i
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., K) by cos, sin broadcastable to it; computed in cos's dtype, returned in
    x's."""
    xc = x.to(cos.dtype)
    return (xc * cos + rotate_half(xc) * sin).to(x.dtype)


def rotary_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32 and half precision, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)
