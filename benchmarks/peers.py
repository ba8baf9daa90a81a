"""The contenders, grouped by the function they compute on the same weights, encoderkit first:

* encoder: ``encoderkit.Encoder``, copied with ``Encoder.from_torch`` from the
  ``torch.nn.TransformerEncoder`` it races (post-norm, gelu, batch_first);
* text model: ``encoderkit.TextEncoder`` against Hugging Face ``BertModel`` with sdpa and with
  eager attention, both loaded from the directory ``encoderkit.save_pretrained`` wrote.

``with_compiled`` adds whole-model ``torch.compile`` copies of chosen contenders beside them.

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from benchmarks.gates import MismatchError
from benchmarks.measure import OURS
from benchmarks.workloads import Batch, Shape
from encoderkit import Encoder, TextConfig, TextEncoder, save_pretrained

DROPOUT = 0.1
TORCH = "nn.TransformerEncoder"
HF_SDPA = "HF BertModel sdpa"
# The contenders worth compiling: encoderkit, and each group's peer at its best (Hugging Face's
# eager attention is the slower of its two; compiled it races nothing new).
COMPILED = (OURS, TORCH, HF_SDPA)

Forward = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (inputs, mask) -> (B, T, D)


@dataclass
class Contender:
    name: str
    model: nn.Module
    forward: Forward
    probe: nn.Parameter  # the weight whose gradient the training check compares
    bind: Callable[[nn.Module], Forward] | None = None  # ``forward`` on another copy of ``model``
    compiled: bool = False


@dataclass
class Group:
    """Contenders computing the same function on the same weights; encoderkit first."""

    level: str  # "encoder" or "text model"
    contenders: list[Contender]
    make_inputs: Callable[[Batch], torch.Tensor]


def encoder_group(shape: Shape, seed: int = 0, dropout: float = DROPOUT) -> Group:
    """encoderkit's Encoder and the nn.TransformerEncoder it was copied from."""
    torch.manual_seed(seed)
    d = shape.d_model
    layer = nn.TransformerEncoderLayer(
        d,
        shape.n_heads,
        shape.d_ff,
        dropout=dropout,
        activation="gelu",
        layer_norm_eps=1e-12,
        batch_first=True,
    )
    theirs = nn.TransformerEncoder(layer, shape.n_layers, enable_nested_tensor=True)
    with torch.no_grad():  # the layers start as copies of one; give each its own weights
        for p in theirs.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
    ours = Encoder.from_torch(theirs)

    def torch_forward(model: nn.Module) -> Forward:
        def forward(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            return model(x, src_key_padding_mask=None if mask is None else ~mask)  # True = pad

        return forward

    def make_inputs(batch: Batch) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1)
        return torch.randn(len(batch.lengths), batch.seq_len, d, generator=g)

    return Group(
        "encoder",
        [
            Contender(OURS, ours, ours, ours.blocks[0].attn.qkv.weight, _itself),
            Contender(
                TORCH,
                theirs,
                torch_forward(theirs),
                theirs.layers[0].self_attn.in_proj_weight,
                torch_forward,
            ),
        ],
        make_inputs,
    )


def text_group(shape: Shape, directory: Path, seed: int = 0, dropout: float = DROPOUT) -> Group:
    """encoderkit's TextEncoder and transformers' BertModel (sdpa, eager) with its weights."""
    from transformers import BertModel  # a few seconds to import; only the text rows need it

    config = TextConfig(
        d_model=shape.d_model,
        n_heads=shape.n_heads,
        d_ff=shape.d_ff,
        n_layers=shape.n_layers,
        vocab_size=shape.vocab_size,
        max_positions=shape.max_positions,
        dropout=dropout,
        attention_dropout=dropout,
        layer_norm_eps=1e-12,
    )
    torch.manual_seed(seed)
    ours = TextEncoder(config)
    save_pretrained(ours, directory)
    contenders = [Contender(OURS, ours, ours, ours.embeddings.tokens.weight, _itself)]
    for impl in ("sdpa", "eager"):
        # The weights are saved in float32, so they load as float32 under any transformers
        # default; no dtype argument, whose name changed in 4.56 (torch_dtype -> dtype).
        hf = BertModel.from_pretrained(directory, attn_implementation=impl, add_pooling_layer=False)
        if hf.dtype != torch.float32:
            raise MismatchError(f"HF BertModel {impl} loaded as {hf.dtype}, expected torch.float32")
        contenders.append(
            Contender(
                f"HF BertModel {impl}",
                hf,
                _hf_forward(hf),
                hf.embeddings.word_embeddings.weight,
                _hf_forward,
            )
        )

    def make_inputs(batch: Batch) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(1, shape.vocab_size, (len(batch.lengths), batch.seq_len), generator=g)
        return ids.masked_fill(~batch.real, config.pad_token_id)  # (B, T)

    return Group("text model", contenders, make_inputs)


def _itself(model: nn.Module) -> Forward:
    return model


def _hf_forward(model: nn.Module) -> Forward:
    def forward(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attention_mask = None if mask is None else mask.long()
        return model(input_ids=ids, attention_mask=attention_mask).last_hidden_state

    return forward


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, copied to the CPU: where every timed case starts from."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def compiled_copy(c: Contender, backend: str = "inductor") -> Contender:
    """``c`` as "<name> compiled": a deep copy of its model under whole-model ``torch.compile``,
    with its own weights (and so its own optimizer), to race ``c`` and the others."""
    if c.bind is None:
        raise ValueError(f"{c.name}: expected a contender that can bind a copy, got bind=None")
    model = copy.deepcopy(c.model)
    (probe,) = [n for n, p in c.model.named_parameters() if p is c.probe]
    compiled = cast(nn.Module, torch.compile(model, backend=backend))  # an OptimizedModule
    return Contender(
        f"{c.name} compiled", compiled, c.bind(compiled), model.get_parameter(probe), c.bind, True
    )


def with_compiled(
    group: Group, backend: str = "inductor", names: Collection[str] = COMPILED
) -> Group:
    """``group`` with a compiled copy of each contender named in ``names`` right after it."""
    contenders = []
    for c in group.contenders:
        contenders.append(c)
        if c.name in names:
            contenders.append(compiled_copy(c, backend))
    return Group(group.level, contenders, group.make_inputs)


def only(group: Group, keep: Callable[[Contender], bool]) -> Group:
    """``group`` with the contenders ``keep`` accepts, in order."""
    return Group(group.level, [c for c in group.contenders if keep(c)], group.make_inputs)
