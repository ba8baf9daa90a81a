"""The two encoders people use: BERT-style text (Devlin et al. 2019) and ViT-style images
(Dosovitskiy et al. 2021), and classification heads on top of them.

Shape legend: B batch, T tokens, D model width, C channels / classes, N patches.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from encoderkit.checks import check_choice, check_positive_int
from encoderkit.config import TextConfig, VisionConfig
from encoderkit.embeddings import PatchEmbedding, TokenEmbedding
from encoderkit.encoder import Encoder, init_weights, trunc_normal_
from encoderkit.masks import padding_mask_bool

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


class TextEncoder(nn.Module):
    """Token, position and segment embeddings, then the encoder: (B, T) ids -> (B, T, D)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if not isinstance(config, TextConfig):
            raise TypeError(f"config must be a TextConfig, got {type(config).__name__}")
        self.config = c = config
        self.embeddings = TokenEmbedding(
            c.vocab_size,
            c.d_model,
            c.max_positions,
            c.type_vocab_size,
            c.position_encoding,
            c.layer_norm_eps,
            c.dropout,
            c.pad_token_id,
        )
        self.encoder = Encoder(c)
        self.pooler = Pooler(c.d_model) if c.pooler else None
        self.embeddings.apply(_init_embeddings)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (B, T, D); 0 at padded positions. ``attention_mask`` as in
        :mod:`encoderkit.masks`: True / 1 = real token."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T) -> (B, T, D)
        return self.encoder(x, attention_mask)

    def pool(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The pooled [CLS] representation (B, D): BERT's pooler when the model has one.

        With ``attention_mask``, [CLS] is each sequence's first real token, so left-padded
        batches pool what right-padded ones do (see :func:`pool_tokens`); a sequence with no
        real token pools 0, which the pooler maps to tanh(b).
        """
        first = pool_tokens(hidden, "cls", attention_mask)  # (B, T, D) -> (B, D)
        return first if self.pooler is None else self.pooler(first)


class VisionEncoder(nn.Module):
    """Patch embeddings with a class token, then the encoder: (B, C, H, W) -> (B, 1 + N, D).

    With pre-norm blocks (ViT) the encoder ends in the final LayerNorm.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if not isinstance(config, VisionConfig):
            raise TypeError(f"config must be a VisionConfig, got {type(config).__name__}")
        self.config = c = config
        self.embeddings = PatchEmbedding(
            c.image_size, c.patch_size, c.num_channels, c.d_model, c.dropout
        )
        self.encoder = Encoder(c)
        self.pooler = Pooler(c.d_model) if c.pooler else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(pixels))  # (B, C, H, W) -> (B, 1 + N, D)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        first = hidden[:, 0]  # the class token: (B, 1 + N, D) -> (B, D)
        return first if self.pooler is None else self.pooler(first)


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


class ClassificationHead(nn.Module):
    """Dropout, then a linear layer on the pooled vector: (B, D) -> logits (B, classes)."""

    def __init__(self, d_model: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(d_model, num_classes)
        init_weights(self.fc)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(pooled))


class SequenceClassifier(nn.Module):
    """A text encoder with a linear head on the pooled sequence: (B, T) -> logits (B, C)."""

    def __init__(self, config: TextConfig, num_classes: int, pooling: Pooling = "cls") -> None:
        super().__init__()
        check_choice("pooling", pooling, ("cls", "mean"))
        self.pooling: Pooling = pooling
        self.encoder = TextEncoder(config)
        self.head = ClassificationHead(config.d_model, num_classes, config.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        if self.pooling == "cls":
            pooled = self.encoder.pool(hidden, attention_mask)
        else:
            pooled = pool_tokens(hidden, "mean", attention_mask)
        return self.head(pooled)


class ImageClassifier(nn.Module):
    """A vision encoder with a linear head: (B, C, H, W) -> logits (B, classes).

    "cls" pools the class token; "mean" averages the patch tokens (not the class token), as
    timm's global average pooling.
    """

    def __init__(self, config: VisionConfig, num_classes: int, pooling: Pooling = "cls") -> None:
        super().__init__()
        check_choice("pooling", pooling, ("cls", "mean"))
        self.pooling: Pooling = pooling
        self.encoder = VisionEncoder(config)
        self.head = ClassificationHead(config.d_model, num_classes, config.dropout)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(pixels)  # (B, 1 + N, D)
        if self.pooling == "cls":
            pooled = self.encoder.pool(hidden)
        else:
            pooled = pool_tokens(hidden[:, 1:], "mean")
        return self.head(pooled)


def _init_embeddings(module: nn.Module) -> None:
    """BERT initialises embedding tables like its Linear layers, N(0, 0.02)."""
    if isinstance(module, nn.Embedding):
        trunc_normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
