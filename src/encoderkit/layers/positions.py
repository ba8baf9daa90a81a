"""Position encodings: which ones a model can use, where each token sits in its sequence, and the
fixed sinusoidal encoding (Vaswani et al. 2017, section 3.5). Learned absolute positions are an
``nn.Embedding`` table in :class:`encoderkit.layers.embeddings.TokenEmbedding`; rotary positions
and ALiBi act inside attention (:mod:`encoderkit.layers.rotary`, :mod:`encoderkit.layers.alibi`).

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import torch
from torch import nn

from encoderkit.utils.checks import check_positive_int

PositionEncoding = Literal["learned", "sinusoidal", "rotary", "alibi", "none"]
POSITION_ENCODINGS: tuple[PositionEncoding, ...] = typing.get_args(PositionEncoding)


class SinusoidalPositionalEncoding(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D)).

    Fixed, not learned: each dimension is a sinusoid of its own wavelength, so PE(pos + k) is a
    linear function of PE(pos) and the model can attend by relative position.
    """

    table: torch.Tensor

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("max_positions", max_positions)
        position = torch.arange(max_positions, dtype=torch.float64)[:, None]  # (T, 1)
        rate = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(1e4) / d_model)
        )
        table = torch.zeros(max_positions, d_model, dtype=torch.float64)
        table[:, 0::2] = torch.sin(position * rate)
        table[:, 1::2] = torch.cos(position * rate[: d_model // 2])
        # Derived from the sizes, so not part of the state dict.
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, seq_len: int) -> torch.Tensor:
        """The first ``seq_len`` encodings: (T, D)."""
        return self.table[:seq_len]


def token_positions(real: torch.Tensor | None, seq_len: int, device: torch.device) -> torch.Tensor:
    """Each token's position in its sequence, counting real tokens from 0: (B, T) from a (B, T)
    bool mask (True = real token), or (1, T) = 0 .. T - 1 without one.

    What rotary positions rotate by and what windows and ALiBi measure distances in, so that a
    sequence gives the same result right-padded, left-padded, with holes or packed (where
    :class:`encoderkit.layers.packing.Packing` counts the same way). transformers' ModernBERT
    numbers padded positions 0 .. T - 1 instead: relative positions, and so its outputs, agree
    except across holes.
    """
    if real is None:
        return torch.arange(seq_len, device=device)[None]  # (1, T)
    return real.cumsum(dim=1) - 1  # (B, T); a padded token shares the previous real one's
