"""What the encoder reads: token, position and segment embeddings for text (BERT, Devlin et al.
2019, section 3), the fixed sinusoidal encoding (Vaswani et al. 2017, section 3.5), and patch
embeddings with a class token for images (ViT, Dosovitskiy et al. 2021, section 3.1).

Shape legend: B batch, T tokens, D model width, C channels, N patches, P patch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.layers.positions import (
    POSITION_ENCODINGS,
    PositionEncoding,
    SinusoidalPositionalEncoding,
)
from encoderkit.utils.checks import (
    check_bool,
    check_choice,
    check_input_dtype,
    check_positive_int,
    check_probability,
    tracing,
)


class TokenEmbedding(nn.Module):
    """BERT's input: token + position + segment embeddings, then LayerNorm and dropout."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        max_positions: int,
        type_vocab_size: int = 2,
        position_encoding: PositionEncoding = "learned",
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        position_offset: int = 0,
        bias: bool = True,
    ) -> None:
        """``bias=False``: the LayerNorm has no shift (ModernBERT's ``norm_bias``).
        ``position_encoding`` "learned" or "sinusoidal" adds a table of ``max_positions``
        rows, token t reading row ``position_offset`` + t (RoBERTa's learned positions start at
        pad_token_id + 1), so at most max_positions - position_offset tokens fit. "rotary",
        "alibi" and "none" add no positions here (rotary and ALiBi act inside attention) and
        take any length: ``max_positions`` is then only advisory."""
        super().__init__()
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("d_model", d_model)
        check_positive_int("max_positions", max_positions)
        check_probability("dropout", dropout)
        if pad_token_id is not None and not 0 <= pad_token_id < vocab_size:
            raise ValueError(
                f"pad_token_id must lie in [0, vocab_size={vocab_size}), got {pad_token_id!r}"
            )
        check_choice("position_encoding", position_encoding, POSITION_ENCODINGS)
        tabled = position_encoding in ("learned", "sinusoidal")
        if isinstance(position_offset, bool) or not isinstance(position_offset, int):
            raise TypeError(f"position_offset must be an int, got {position_offset!r}")
        if tabled and not 0 <= position_offset < max_positions:
            raise ValueError(
                f"position_offset must lie in [0, max_positions={max_positions}) so that a "
                f"token fits in the position table, got {position_offset}"
            )
        if not tabled and position_offset != 0:
            raise ValueError(
                f"position_offset shifts a learned or sinusoidal table; position_encoding "
                f"{position_encoding!r} has none, so it must be 0, got {position_offset}"
            )
        self.vocab_size, self.max_positions = vocab_size, max_positions
        self.position_offset = position_offset
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_token_id)
        # No module at all for rotary / alibi / none, so the state dict has no positions.* key
        self.positions: nn.Module | None = None
        if position_encoding == "learned":
            self.positions = nn.Embedding(max_positions, d_model)
        elif position_encoding == "sinusoidal":
            self.positions = SinusoidalPositionalEncoding(d_model, max_positions)
        self.segments = nn.Embedding(type_vocab_size, d_model) if type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, D)."""
        T = check_token_ids("input_ids", input_ids, self.vocab_size).shape[1]
        offset = self.position_offset
        if self.positions is not None and T > self.max_positions - offset:
            shifted = f" less its position_offset {offset}" if offset else ""
            raise ValueError(
                f"input_ids has {T} tokens, more than the model's max_positions "
                f"{self.max_positions}{shifted}; truncate the input"
            )
        x = self.tokens(input_ids)  # (B, T) -> (B, T, D)
        if self.segments is not None:
            x = x + _segment_embeddings(self.segments, input_ids, token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but this model has no segment embeddings")
        if isinstance(self.positions, nn.Embedding):
            x = x + self.positions.weight[offset : offset + T]  # (T, D) broadcast over B
        elif isinstance(self.positions, SinusoidalPositionalEncoding):
            x = x + self.positions(offset + T)[offset:].to(x.dtype)
        return self.drop(self.norm(x))


def _segment_embeddings(
    table: nn.Embedding, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None
) -> torch.Tensor:
    if token_type_ids is None:
        return table.weight[0]  # every token in segment 0
    if token_type_ids.shape != input_ids.shape:
        raise ValueError(
            f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(token_type_ids.shape)}"
        )
    check_token_ids("token_type_ids", token_type_ids, table.num_embeddings)
    return table(token_type_ids)


def check_token_ids(name: str, ids: object, vocab_size: int) -> torch.Tensor:
    """ids must be a 2-D integer tensor with values in [0, vocab_size) (values checked in eager
    calls only, see :func:`encoderkit.utils.checks.tracing`)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):  # what nn.Embedding can index with
        raise TypeError(f"{name} must be an int64 or int32 tensor, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, T), got shape {tuple(ids.shape)}")
    if not tracing() and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"{name} must lie in [0, {vocab_size}), got values from {int(ids.min())} "
            f"to {int(ids.max())}"
        )
    return ids


class PatchEmbedding(nn.Module):
    """Cut the image into P x P patches, project each to D (a strided convolution), prepend a
    class token and add learned position embeddings.

    With ``distillation_token`` a second learned token follows the class token, before the
    patches, with its own position (DeiT, Touvron et al. 2021, section 4): the sequence then
    starts with ``prefix`` = 2 special tokens instead of 1.

    Images of another size than ``image_size`` work when both sides divide by the patch size:
    the position grid is resized by bicubic interpolation, as for ViT fine-tuning at a higher
    resolution (Dosovitskiy et al. 2021, section 3.2); the special tokens' positions are kept.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_channels: int,
        d_model: int,
        dropout: float = 0.0,
        distillation_token: bool = False,
    ) -> None:
        super().__init__()
        check_bool("distillation_token", distillation_token)
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("num_channels", num_channels),
            ("d_model", d_model),
        ):
            check_positive_int(name, value)
        if image_size % patch_size:
            raise ValueError(
                f"image_size must be divisible by patch_size, got {image_size} and {patch_size}"
            )
        check_probability("dropout", dropout)
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.grid = image_size // patch_size
        self.proj = nn.Conv2d(num_channels, d_model, kernel_size=patch_size, stride=patch_size)
        self.prefix = 2 if distillation_token else 1  # special tokens before the patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d_model)) if distillation_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.prefix + self.grid**2, d_model))
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
        self.drop = nn.Dropout(dropout)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, C, H, W) -> (B, S + N, D) with S = ``prefix`` special tokens ([CLS], then
        DeiT's distillation token) and N = (H / P) (W / P); an empty batch (B = 0) gives
        (0, S + N, D)."""
        B, _, H, W = self.check_pixels(pixels).shape
        x = self.proj(pixels)  # (B, C, H, W) -> (B, D, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # -> (B, N, D)
        special = [self.cls_token.expand(B, -1, -1)]  # (1, 1, D) -> (B, 1, D)
        if self.dist_token is not None:
            special.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat([*special, x], dim=1)  # -> (B, S + N, D)
        return self.drop(x + self.position_embeddings(H // self.patch_size, W // self.patch_size))

    def position_embeddings(self, rows: int, cols: int) -> torch.Tensor:
        """(1, S + rows * cols, D): the trained grid, resized bicubically when it differs; the
        S special tokens' positions are never resized."""
        if (rows, cols) == (self.grid, self.grid):
            return self.pos_embed
        D, S = self.pos_embed.shape[-1], self.prefix
        special_pos, grid_pos = self.pos_embed[:, :S], self.pos_embed[:, S:]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, D).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid_pos = F.interpolate(grid_pos, size=(rows, cols), mode="bicubic", align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, D)  # -> (1, N, D)
        return torch.cat([special_pos, grid_pos], dim=1)

    def check_pixels(self, pixels: object) -> torch.Tensor:
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(f"pixels must be a torch.Tensor, got {type(pixels).__name__}")
        if not pixels.is_floating_point():
            raise TypeError(f"pixels must be floating point, got dtype {pixels.dtype}")
        if pixels.dim() != 4:
            raise ValueError(f"pixels must be 4-D (B, C, H, W), got shape {tuple(pixels.shape)}")
        _, C, H, W = pixels.shape
        if C != self.num_channels:
            raise ValueError(
                f"pixels must have {self.num_channels} channels, got {C} "
                f"(shape {tuple(pixels.shape)})"
            )
        if H < self.patch_size or W < self.patch_size:  # 0 x 0 divides by anything
            raise ValueError(
                f"image height and width must be at least the patch size {self.patch_size}, "
                f"got {H} x {W}"
            )
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"image height and width must be divisible by the patch size {self.patch_size}, "
                f"got {H} x {W}; resize the image"
            )
        return check_input_dtype(pixels, self.proj.weight.dtype, "pixels")
