"""The text and vision models' architectures: ``EncoderConfig`` plus what their embeddings need."""

from __future__ import annotations

from dataclasses import dataclass

from encoderkit.layers.config import EncoderConfig
from encoderkit.layers.positions import PositionEncoding
from encoderkit.utils.checks import check_bool, check_positive_int


@dataclass(frozen=True, kw_only=True)
class TextConfig(EncoderConfig):
    """A BERT-style text encoder: the encoder's sizes plus the vocabulary and positions.

    Defaults are BERT's (uncased WordPiece vocabulary, 512 positions, 2 segments), so
    ``TextConfig.bert_base()`` and ``TextConfig.minilm_l6()`` describe the real models.
    """

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    position_encoding: PositionEncoding = "learned"
    pad_token_id: int = 0
    pooler: bool = False  # BERT's pooler: tanh(W h_[CLS] + b)
    # RoBERTa's learned positions start at pad_token_id + 1: position t reads row t + offset
    position_offset: int = 0
    # ELECTRA: token embeddings of this width, projected to d_model; None = d_model
    embedding_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("max_positions", self.max_positions)
        if isinstance(self.type_vocab_size, bool) or not (
            isinstance(self.type_vocab_size, int) and self.type_vocab_size >= 0
        ):
            raise ValueError(f"type_vocab_size must be an int >= 0, got {self.type_vocab_size!r}")
        if isinstance(self.position_offset, bool) or not (
            isinstance(self.position_offset, int) and self.position_offset >= 0
        ):
            raise ValueError(f"position_offset must be an int >= 0, got {self.position_offset!r}")
        if self.embedding_size is not None:
            check_positive_int("embedding_size", self.embedding_size)
        if self.position_offset and self.position_encoding not in ("learned", "sinusoidal"):
            raise ValueError(
                f"position_offset shifts a position table, which position_encoding="
                f"{self.position_encoding!r} has not: it must be 0, got {self.position_offset}"
            )
        if self.position_offset >= self.max_positions:
            raise ValueError(
                f"position_offset must be less than max_positions={self.max_positions}, got "
                f"{self.position_offset}"
            )
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int):
            raise TypeError(f"pad_token_id must be an int, got {self.pad_token_id!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id must lie in [0, vocab_size={self.vocab_size}), "
                f"got {self.pad_token_id!r}"
            )
        check_bool("pooler", self.pooler)

    @property
    def longest_input(self) -> int | None:
        """How many tokens the position table covers (RoBERTa's starts at an offset), or None
        when positions have no table (rotary, ALiBi, none) and any length runs."""
        if self.position_encoding in ("learned", "sinusoidal"):
            return self.max_positions - self.position_offset
        return None


@dataclass(frozen=True, kw_only=True)
class VisionConfig(EncoderConfig):
    """A ViT-style image encoder: the encoder's sizes plus image and patch size.

    Defaults are ViT-B/16's input (224 x 224 RGB, 16 x 16 patches), so ``VisionConfig.vit_base()``
    describes the real model.
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    pooler: bool = False  # HF ViTModel's pooler: tanh(W h_[CLS] + b)
    position_encoding: PositionEncoding = "learned"  # the patch grid's learned table
    distillation_token: bool = False  # DeiT: a second token after [CLS], before the patches

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("image_size", self.image_size)
        check_positive_int("patch_size", self.patch_size)
        check_positive_int("num_channels", self.num_channels)
        check_bool("pooler", self.pooler)
        check_bool("distillation_token", self.distillation_token)
        if self.position_encoding != "learned":
            raise ValueError(
                f"position_encoding must be 'learned' for a vision encoder (its patch grid's "
                f"table), got {self.position_encoding!r}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size must be divisible by patch_size, got {self.image_size} "
                f"and {self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2
