"""Pooling a sequence of hidden states into one vector: the [CLS] token (BERT, ViT), its pooler
tanh(W h_[CLS] + b) (Devlin et al. 2019, section 3), or the mean of the real tokens
(Reimers & Gurevych 2019).

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from encoderkit.layers.encoder import init_weights
from encoderkit.layers.masks import padding_mask_bool
from encoderkit.utils.checks import check_choice

Pooling = Literal["cls", "mean"]


class Pooler(nn.Module):
    """BERT's pooler: tanh(W h_[CLS] + b), the [CLS] state through one dense layer."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        init_weights(self.dense)

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        """``first``: each sequence's [CLS] state, (B, D) -> (B, D)."""
        return torch.tanh(self.dense(first))


def pool_tokens(
    hidden: torch.Tensor, pooling: Pooling, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One vector per sequence: (B, T, D) -> (B, D).

    "cls" takes the first token, or with ``attention_mask`` the first real one, so that
    left- and right-padded batches agree; "mean" averages the real tokens only. A sequence
    with no real token pools to 0 either way (for "cls", not whatever its padding holds).
    """
    check_choice("pooling", pooling, ("cls", "mean"))
    if attention_mask is None:
        return hidden[:, 0] if pooling == "cls" else hidden.mean(dim=1)
    B, T, D = hidden.shape
    real = padding_mask_bool(attention_mask, B, T)  # (B, T)
    if pooling == "cls":
        # argmax finds the first maximum: the first real token, or 0 in an all-padding row;
        # no host sync, so the forward stays traceable.
        first = real.to(torch.uint8).argmax(dim=1)  # (B,)
        picked = hidden.gather(1, first[:, None, None].expand(B, 1, D))[:, 0]  # -> (B, D)
        return torch.where(real.any(dim=1, keepdim=True), picked, torch.zeros_like(picked))
    weight = real[..., None].to(hidden.dtype)  # (B, T, 1)
    return (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
