"""Task heads on the encoders: sequence classification on text, image classification on images.

Shape legend: B batch, T tokens, D model width, C channels / classes, N patches.
"""

from __future__ import annotations

import torch
from torch import nn

from encoderkit.layers.encoder import init_weights
from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.pooling import Pooling, pool_tokens
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder
from encoderkit.utils.checks import check_choice, check_positive_int


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
