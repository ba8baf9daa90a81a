"""The ViT-style image encoder (Dosovitskiy et al. 2021): patch embeddings with a class token
(and DeiT's distillation token, Touvron et al. 2021), then the encoder.

Shape legend: B batch, C channels, N patches, S special tokens (1, or 2 with DeiT's distillation
token), D model width.
"""

from __future__ import annotations

import torch
from torch import nn

from encoderkit.layers.embeddings import PatchEmbedding
from encoderkit.layers.encoder import Encoder
from encoderkit.models.config import VisionConfig
from encoderkit.models.pooling import Pooler
from encoderkit.models.text import PretrainedMixin


class VisionEncoder(nn.Module, PretrainedMixin):
    """Patch embeddings with a class token, then the encoder: (B, C, H, W) -> (B, S + N, D).

    With pre-norm blocks (ViT) the encoder ends in the final LayerNorm. With
    ``config.distillation_token`` (DeiT) token 1 is the distillation token; :meth:`pool` still
    reads the class token, token 0.
    """

    loads_task_head = False

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if not isinstance(config, VisionConfig):
            raise TypeError(f"config must be a VisionConfig, got {type(config).__name__}")
        self.config = c = config
        self.embeddings = PatchEmbedding(
            c.image_size,
            c.patch_size,
            c.num_channels,
            c.d_model,
            c.dropout,
            distillation_token=c.distillation_token,
        )
        self.encoder = Encoder(c)
        self.pooler = Pooler(c.d_model) if c.pooler else None

    @property
    def prefix(self) -> int:
        """How many special tokens precede the patches: 1 ([CLS]), 2 with a distillation token."""
        return self.embeddings.prefix

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(pixels))  # (B, C, H, W) -> (B, S + N, D)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        first = hidden[:, 0]  # the class token: (B, S + N, D) -> (B, D)
        return first if self.pooler is None else self.pooler(first)
