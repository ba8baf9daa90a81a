"""The position-wise feed-forward network (Vaswani et al. 2017, section 3.3).

    FFN(x) = act(x W_1 + b_1) W_2 + b_2

applied to every position separately, widening d_model -> d_ff -> d_model. The gated variants of
Shazeer 2020 ("GLU Variants Improve Transformer") compute (act(x W) * (x V)) W_2; here W and V are
stacked in one ``fc1`` of width 2 * d_ff, W first, so the gate costs one matmul.

Shape legend: B batch, T tokens, D model width, F feed-forward width.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.utils.checks import (
    check_choice,
    check_features,
    check_positive_int,
    check_probability,
)

Activation = Literal["relu", "gelu", "gelu_tanh", "swiglu", "geglu"]

# name -> (function, gated)
ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], bool]] = {
    "relu": (F.relu, False),
    "gelu": (F.gelu, False),  # exact, with erf (BERT, ViT, nn.TransformerEncoderLayer)
    "gelu_tanh": (partial(F.gelu, approximate="tanh"), False),  # GPT-2's approximation
    "swiglu": (F.silu, True),
    "geglu": (F.gelu, True),
}


class FeedForward(nn.Module):
    """fc1 -> activation -> dropout -> fc2; gated activations split fc1's output in two."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: Activation = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        check_choice("activation", activation, ACTIVATIONS)
        check_probability("dropout", dropout)
        self.d_model = d_model
        self.activation = activation
        self.act, self.gated = ACTIVATIONS[activation]
        self.fc1 = nn.Linear(d_model, 2 * d_ff if self.gated else d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.d_model)
        h = self.fc1(x)  # (B, T, D) -> (B, T, F), or (B, T, 2F) when gated
        if self.gated:
            a, b = h.chunk(2, dim=-1)  # (B, T, 2F) -> 2 x (B, T, F)
            h = self.act(a) * b
        else:
            h = self.act(h)
        return self.fc2(self.drop(h))  # (B, T, F) -> (B, T, D)
