"""The BERT-style text encoder (Devlin et al. 2019): token, position and segment embeddings, then
the encoder.

Shape legend: B batch, T tokens, D model width, E embedding width (ELECTRA's; else D).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from encoderkit.layers.embeddings import TokenEmbedding
from encoderkit.layers.encoder import Encoder, init_weights, trunc_normal_
from encoderkit.models.config import TextConfig
from encoderkit.models.pooling import Pooler, pool_tokens

M = TypeVar("M", bound="PretrainedMixin")


class PretrainedMixin:
    """Hugging Face-style methods on every model class: ``Model.from_pretrained(dir)`` and
    ``model.save_pretrained(dir)``, which call :func:`~encoderkit.models.pretrained.load_pretrained`
    and :func:`~encoderkit.models.pretrained.save_pretrained`.

    Here, in the lowest model module, because every model class mixes it in; the functions are
    imported when called, since :mod:`encoderkit.models.pretrained` imports every model class.
    """

    # An encoder class reads the encoder of a task checkpoint (as transformers' BertModel
    # does); a task class needs a checkpoint of its own class, head included.
    loads_task_head: ClassVar[bool] = True

    @classmethod
    def from_pretrained(cls: type[M], path: str | Path, *, allow_pickle: bool = False) -> M:
        """The model in the Hugging Face-format directory ``path``, as :func:`load_pretrained`
        reads it; a checkpoint of another class raises a :class:`PretrainedError` naming both."""
        from encoderkit.models.pretrained import PretrainedError, load_pretrained

        model = load_pretrained(path, allow_pickle=allow_pickle, head=cls.loads_task_head)
        if not isinstance(model, cls):
            got = type(model).__name__
            raise PretrainedError(
                f"{path}: expected a {cls.__name__} checkpoint, got a {got} one; load it with "
                f"{got}.from_pretrained or encoderkit.load_pretrained"
            )
        return model

    def save_pretrained(
        self, path: str | Path, *, tokenizer: Any = None, model_type: str | None = None
    ) -> Path:
        """Write this model as :func:`save_pretrained` does (and the tokenizer, when given)."""
        from encoderkit.models.pretrained import save_pretrained

        model = typing.cast(nn.Module, self)  # every class that mixes this in is a Module
        return save_pretrained(model, path, tokenizer=tokenizer, model_type=model_type)


class TextEncoder(nn.Module, PretrainedMixin):
    """Token, position and segment embeddings, then the encoder: (B, T) ids -> (B, T, D)."""

    loads_task_head = False

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if not isinstance(config, TextConfig):
            raise TypeError(f"config must be a TextConfig, got {type(config).__name__}")
        self.config = c = config
        # ELECTRA embeds at its own width and projects to d_model (Clark et al. 2020, section 3.2)
        width = c.d_model if c.embedding_size is None else c.embedding_size
        self.embeddings = TokenEmbedding(
            c.vocab_size,
            width,
            c.max_positions,
            c.type_vocab_size,
            c.position_encoding,
            c.layer_norm_eps,
            c.dropout,
            c.pad_token_id,
            c.position_offset,
            bias=c.bias,
        )
        self.embed_proj = nn.Linear(width, c.d_model) if width != c.d_model else None
        if self.embed_proj is not None:
            init_weights(self.embed_proj)
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
        :mod:`encoderkit.layers.masks`: True / 1 = real token."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T) -> (B, T, E)
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # (B, T, E) -> (B, T, D)
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


def _init_embeddings(module: nn.Module) -> None:
    """BERT initialises embedding tables like its Linear layers, N(0, 0.02)."""
    if isinstance(module, nn.Embedding):
        trunc_normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
