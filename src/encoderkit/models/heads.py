"""Task heads on the encoders: sequence and token classification and masked language modelling
on text (Devlin et al. 2019, sections 3.1 and 4), image classification on images (Dosovitskiy
et al. 2021, section 3.1).

Families shape their heads differently (BERT classifies its pooler's output, RoBERTa puts a
dense + tanh layer in the head, DistilBERT a dense + ReLU, ELECTRA a dense + GELU, every masked-LM
head a dense + activation + LayerNorm before the tied output layer); :class:`HeadConfig` says
which, so one head module serves every family.

Shape legend: B batch, T tokens, D model width, W head width, C classes, V vocabulary, N patches.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.layers.config import EncoderConfig
from encoderkit.layers.encoder import init_weights
from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.pooling import Pooling, pool_tokens
from encoderkit.models.text import PretrainedMixin, TextEncoder
from encoderkit.models.vision import VisionEncoder
from encoderkit.utils.checks import (
    check_bool,
    check_choice,
    check_positive_int,
    check_probability,
)

HeadActivation = Literal["tanh", "gelu", "gelu_tanh", "relu"]
HEAD_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "gelu": F.gelu,  # exact, with erf (BERT's and RoBERTa's masked-LM transform)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}
# What Hugging Face's sequence classifiers optimise; it changes only their loss, not the logits.
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """The layers a family puts between the encoder and a head's output layer.

    With ``dense``, the pooled vector (or each token) goes through a dense layer of ``width``
    outputs, ``activation`` and, with ``norm``, a LayerNorm (eps ``norm_eps``, default the
    encoder's) before the output layer. Dropout at rate ``dropout`` (default: the encoder's
    ``dropout``, as Hugging Face's ``classifier_dropout=None``) comes before the output layer and,
    with ``input_dropout``, before the dense layer too. Masked-LM heads use no dropout.

    ``width`` defaults to D for classifiers and to the token embedding width for a masked-LM
    head, whose output layer is that table. ``dense_bias``, ``norm_bias`` and ``output_bias``
    say whether the dense layer, the LayerNorm and the output layer have a bias (ModernBERT's
    heads have none but the masked-LM output's).
    """

    dense: bool = False
    activation: HeadActivation = "tanh"
    norm: bool = False
    width: int | None = None
    norm_eps: float | None = None
    input_dropout: bool = False
    dropout: float | None = None
    dense_bias: bool = True
    norm_bias: bool = True
    output_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("dense", "norm", "input_dropout", "dense_bias", "norm_bias", "output_bias"):
            check_bool(name, getattr(self, name))
        check_choice("activation", self.activation, HEAD_ACTIVATIONS)
        if self.width is not None:
            check_positive_int("width", self.width)
        if self.norm_eps is not None:
            eps = self.norm_eps
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
                raise ValueError(f"norm_eps must be a positive float, got {eps!r}")
        if self.dropout is not None:
            check_probability("dropout", self.dropout)
        if not self.dense:
            used = [
                name
                for name, value in (
                    ("norm", self.norm),
                    ("width", self.width),
                    ("norm_eps", self.norm_eps),
                    ("input_dropout", self.input_dropout),
                    ("dense_bias=False", not self.dense_bias),
                    ("norm_bias=False", not self.norm_bias),
                )
                if value not in (False, None)
            ]
            if used:
                raise ValueError(
                    f"{', '.join(used)} shape the dense layer, which this head has not: "
                    f"set dense=True or leave them unset"
                )

    def on(self, config: EncoderConfig) -> HeadConfig:
        """This head with its defaults spelled out for an encoder of ``config``: the dropout
        rate, and the LayerNorm eps when the head has a LayerNorm."""
        return dataclasses.replace(
            self,
            dropout=config.dropout if self.dropout is None else self.dropout,
            norm_eps=(self.norm_eps or config.layer_norm_eps) if self.norm else None,
        )


class Transform(nn.Module):
    """A dense layer, its activation, then an optional LayerNorm: (..., D) -> (..., W)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        activation: HeadActivation,
        norm_eps: float | None,
        *,
        dense_bias: bool = True,
        norm_bias: bool = True,
    ) -> None:
        super().__init__()
        check_choice("activation", activation, HEAD_ACTIVATIONS)
        self.activation = activation
        self.act = HEAD_ACTIVATIONS[activation]
        self.dense = nn.Linear(d_in, d_out, bias=dense_bias)
        self.norm = (
            nn.LayerNorm(d_out, eps=norm_eps, bias=norm_bias) if norm_eps is not None else None
        )
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.dense(x))
        return x if self.norm is None else self.norm(x)


class ClassificationHead(nn.Module):
    """Dropout, then a linear layer: (B, D) -> logits (B, C), or (B, T, D) -> (B, T, C); with
    ``config.dense``, the dense transform first (see :class:`HeadConfig`)."""

    def __init__(
        self,
        d_model: int,
        num_classes: int,
        dropout: float,
        config: HeadConfig | None = None,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        config = HeadConfig() if config is None else config
        check_positive_int("num_classes", num_classes)
        check_probability("dropout", dropout)
        self.input_dropout = config.input_dropout
        self.transform = _transform(d_model, d_model, config, layer_norm_eps)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(config.width or d_model, num_classes, bias=config.output_bias)
        init_weights(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(self.drop(x) if self.input_dropout else x)
        return self.fc(self.drop(x))


class MaskedLMHead(nn.Module):
    """The transform, then the token embedding table as the output layer plus a bias per token:
    (B, T, D) -> logits (B, T, V). The table is the encoder's, passed in (tied, as in BERT)."""

    def __init__(
        self, d_model: int, width: int, vocab_size: int, config: HeadConfig, layer_norm_eps: float
    ) -> None:
        super().__init__()
        if (config.width or width) != width:
            raise ValueError(
                f"a masked-LM head's width must be its token embedding width {width}, "
                f"got width={config.width}"
            )
        self.transform = _transform(d_model, width, config, layer_norm_eps)
        if self.transform is None and d_model != width:
            raise ValueError(
                f"a masked-LM head without a dense layer reads the hidden states (D={d_model}) "
                f"with the embedding table (width {width}): they must agree"
            )
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if config.output_bias else None

    def forward(self, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, D), table (V, W) -> logits (B, T, V)."""
        x = hidden if self.transform is None else self.transform(hidden)  # (B, T, D) -> (B, T, W)
        return F.linear(x, table, self.bias)


def _transform(d_in: int, d_out: int, config: HeadConfig, eps: float) -> Transform | None:
    if not config.dense:
        return None
    norm_eps = (config.norm_eps or eps) if config.norm else None
    return Transform(
        d_in,
        config.width or d_out,
        config.activation,
        norm_eps,
        dense_bias=config.dense_bias,
        norm_bias=config.norm_bias,
    )


def check_labels(labels: Sequence[str] | None, num_classes: int) -> tuple[str, ...] | None:
    """Class names in class order (Hugging Face's ``id2label``): one distinct str per class."""
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a sequence of str, got {type(labels).__name__}")
    odd = [repr(label) for label in labels if not isinstance(label, str)]
    if odd:
        raise TypeError(f"labels must be str, got {', '.join(odd[:5])}")
    if len(labels) != num_classes:
        raise ValueError(
            f"labels must name each of the {num_classes} classes, got {len(labels)} labels"
        )
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"labels must be distinct, got {twice} more than once")
    return tuple(labels)


def _classification_head(
    config: TextConfig | VisionConfig, num_classes: int, head: HeadConfig
) -> ClassificationHead:
    """``head``'s layers on an encoder of ``config``, its defaults the encoder's (dropout, eps)."""
    dropout = typing.cast(float, head.on(config).dropout)  # on() fills in the default
    return ClassificationHead(config.d_model, num_classes, dropout, head, config.layer_norm_eps)


class SequenceClassifier(nn.Module, PretrainedMixin):
    """A text encoder with a classification head on the pooled sequence: (B, T) -> logits (B, C).

    ``labels`` names the classes in order and ``problem_type`` says how they were trained; both
    are kept for the checkpoint (Hugging Face's ``id2label`` and ``problem_type``).
    """

    def __init__(
        self,
        config: TextConfig,
        num_classes: int,
        pooling: Pooling = "cls",
        *,
        head: HeadConfig | None = None,
        labels: Sequence[str] | None = None,
        problem_type: ProblemType | None = None,
    ) -> None:
        super().__init__()
        check_choice("pooling", pooling, ("cls", "mean"))
        if problem_type is not None:
            check_choice("problem_type", problem_type, PROBLEM_TYPES)
        self.head_config = HeadConfig() if head is None else head
        self.pooling: Pooling = pooling
        self.labels = check_labels(labels, num_classes)
        self.problem_type = problem_type
        self.encoder = TextEncoder(config)
        self.head = _classification_head(config, num_classes, self.head_config)

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


class TokenClassifier(nn.Module, PretrainedMixin):
    """A text encoder with a classification head on every token: (B, T) -> logits (B, T, C).

    Padded positions get the head's output for a zero vector: mask them out of any loss.
    """

    def __init__(
        self,
        config: TextConfig,
        num_classes: int,
        *,
        head: HeadConfig | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.head_config = HeadConfig() if head is None else head
        self.labels = check_labels(labels, num_classes)
        self.encoder = TextEncoder(config)
        self.head = _classification_head(config, num_classes, self.head_config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask, token_type_ids))


MASKED_LM_HEAD = HeadConfig(dense=True, activation="gelu", norm=True)


class MaskedLM(nn.Module, PretrainedMixin):
    """A text encoder with a masked-LM head whose output layer is the token embedding table
    (tied: one parameter, as Hugging Face ties them): (B, T) -> logits (B, T, V).

    With ``positions``, a (B, T) bool mask, the head reads only the True positions and the
    forward returns their logits (M, V), row by row: training predicts the ~15% masked tokens
    only, and (B, T, V) logits over a 30,522-token vocabulary would cost far more memory than
    the encoder itself.
    """

    def __init__(self, config: TextConfig, *, head: HeadConfig | None = None) -> None:
        super().__init__()
        self.head_config = MASKED_LM_HEAD if head is None else head
        self.encoder = TextEncoder(config)
        table = self.encoder.embeddings.tokens.weight  # (V, W): W = embedding_size or D
        self.head = MaskedLMHead(
            config.d_model, table.shape[1], config.vocab_size, self.head_config,
            config.layer_norm_eps,
        )  # fmt: skip

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        if positions is not None:
            if positions.dtype != torch.bool or positions.shape != input_ids.shape:
                raise ValueError(
                    f"positions must be a bool mask shaped like input_ids {tuple(input_ids.shape)}"
                    f", got {positions.dtype} {tuple(positions.shape)}"
                )
            hidden = hidden[positions]  # (B, T, D) -> (M, D)
        return self.head(hidden, self.encoder.embeddings.tokens.weight)


class ImageClassifier(nn.Module, PretrainedMixin):
    """A vision encoder with a classification head: (B, C, H, W) -> logits (B, classes).

    "cls" pools the class token; "mean" averages the patch tokens (not the class or distillation
    token), as timm's global average pooling. ``labels`` names the classes in order.

    With ``distillation_head`` (DeiT's classifier with teacher, Touvron et al. 2021, section 5:
    the encoder needs ``distillation_token``), a second head reads the distillation token and
    the logits are the mean of both heads'.
    """

    def __init__(
        self,
        config: VisionConfig,
        num_classes: int,
        pooling: Pooling = "cls",
        *,
        head: HeadConfig | None = None,
        labels: Sequence[str] | None = None,
        distillation_head: bool = False,
    ) -> None:
        super().__init__()
        check_choice("pooling", pooling, ("cls", "mean"))
        check_bool("distillation_head", distillation_head)
        if distillation_head and not (
            isinstance(config, VisionConfig) and config.distillation_token and pooling == "cls"
        ):
            raise ValueError(
                "distillation_head reads the distillation token: it needs a config with "
                "distillation_token=True and pooling='cls'"
            )
        self.head_config = HeadConfig() if head is None else head
        self.pooling: Pooling = pooling
        self.labels = check_labels(labels, num_classes)
        self.encoder = VisionEncoder(config)
        self.head = _classification_head(config, num_classes, self.head_config)
        self.distill_head = (
            _classification_head(config, num_classes, self.head_config)
            if distillation_head
            else None
        )

    @property
    def distillation_head(self) -> bool:
        return self.distill_head is not None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(pixels)  # (B, S + N, D)
        if self.distill_head is not None:  # class and distillation tokens: (B, D) each
            return (self.head(self.encoder.pool(hidden)) + self.distill_head(hidden[:, 1])) / 2
        if self.pooling == "cls":
            pooled = self.encoder.pool(hidden)
        else:
            pooled = pool_tokens(hidden[:, self.encoder.prefix :], "mean")  # the patches only
        return self.head(pooled)


TaskModel = SequenceClassifier | TokenClassifier | MaskedLM | ImageClassifier
