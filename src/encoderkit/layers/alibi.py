"""ALiBi, attention with linear biases (Press et al. 2022, section 3): no position embeddings;
head h adds -m_h * |i - j| to the score of query i and key j, a penalty linear in distance, with
slopes m_h a fixed geometric sequence. Bidirectional as in MosaicBERT and other ALiBi encoders
(the paper's causal form sees only j <= i, so i - j >= 0). Like rotary positions it has no
length limit; distances count each sequence's real tokens, padded or packed.

Shape legend: B batch, H heads, T queries, S keys.
"""

from __future__ import annotations

import math

import torch

from encoderkit.utils.checks import check_positive_int


def alibi_slopes(n_heads: int) -> tuple[float, ...]:
    """The paper's slopes: for H a power of 2, m_h = 2^(-8 h / H), h = 1 .. H (1/2 .. 1/256
    for 8 heads). Otherwise the slopes of the power of 2 below H, then every other slope of the
    power of 2 above, as the authors' reference code does."""
    check_positive_int("n_heads", n_heads)

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    below = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_2(below)
    if below < n_heads:
        slopes += power_of_2(2 * below)[0::2][: n_heads - below]
    return tuple(slopes)


def alibi_bias(
    query_positions: torch.Tensor, key_positions: torch.Tensor, slopes: torch.Tensor
) -> torch.Tensor:
    """-m_h * |i - j| for positions (..., T) and (..., S) and slopes (H,): (..., H, T, S) in
    slopes' dtype."""
    distance = query_positions[..., :, None] - key_positions[..., None, :]  # (..., T, S)
    distance = distance.abs().to(slopes.dtype)[..., None, :, :]  # -> (..., 1, T, S)
    return -slopes[:, None, None] * distance  # (H, 1, 1) * (..., 1, T, S) -> (..., H, T, S)
