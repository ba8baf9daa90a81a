"""Exported graphs of the models: the interface they share (named inputs and outputs, a dynamic
batch axis and, for text, a dynamic sequence axis) and ``torch.export`` programs saved as .pt2.

Every graph is traced from a copy of the model in eval mode, in float32, on the CPU, so the model
passed in keeps its state, training flag, dtype and device. ONNX export
(:mod:`encoderkit.export.onnx`) traces the same interface.

Shape legend: B batch, T tokens, D model width, C channels / classes, H x W image, N patches.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from encoderkit.models.config import TextConfig
from encoderkit.models.heads import ImageClassifier, MaskedLM, SequenceClassifier, TokenClassifier
from encoderkit.models.sentence import SentenceEncoder
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder
from encoderkit.utils.files import atomic_write

TextModel = TextEncoder | SequenceClassifier | TokenClassifier | MaskedLM
Exportable = TextModel | SentenceEncoder | VisionEncoder | ImageClassifier
EXPORTABLE = (
    TextEncoder,
    SequenceClassifier,
    TokenClassifier,
    MaskedLM,
    SentenceEncoder,
    VisionEncoder,
    ImageClassifier,
)

# The example batch the graphs are traced with: neither axis may be 0 or 1, which torch.export
# would specialise the graph to.
EXAMPLE_BATCH, EXAMPLE_SEQ_LEN = 2, 8


@dataclass(frozen=True)
class GraphInterface:
    """What an exported graph reads and returns: ``module(*inputs)`` gives ``outputs`` (one
    tensor, or a tuple when there are several); ``dynamic_shapes`` follows ``inputs``."""

    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_shapes: tuple[dict[int, Dim], ...]


def graph_interface(model: Exportable) -> GraphInterface:
    """The graph of ``model``, with the ONNX / Hugging Face input and output names.

    Text graphs read ``input_ids`` and ``attention_mask`` (B, T) int64, 1 = real token, plus
    ``token_type_ids`` (B, T) when the model has segment embeddings (as Hugging Face's BERT
    exports do; pass zeros for single sentences). A sentence encoder's graph reads no
    ``token_type_ids``: ``encode`` puts every token in segment 0. Vision graphs read
    ``pixel_values`` (B, C, H, W) float32 at the model's image size.
    """
    check_exportable(model)
    batch = Dim("batch", min=1)
    if isinstance(model, (VisionEncoder, ImageClassifier)):
        output = "last_hidden_state" if isinstance(model, VisionEncoder) else "logits"
        return GraphInterface(model, ("pixel_values",), (output,), ({0: batch},))
    text = model.model if isinstance(model, SentenceEncoder) else _text_encoder(model)
    config: TextConfig = text.config
    axes: dict[int, Dim] = {0: batch}
    longest = config.longest_input  # None: rotary / ALiBi positions, any length
    if longest is None or longest > 1:  # a length capped at 1 cannot be dynamic: it is 1
        axes[1] = Dim("sequence", min=1, max=longest)
    names: tuple[str, ...] = ("input_ids", "attention_mask")
    if isinstance(model, SentenceEncoder):
        outputs = ("last_hidden_state", "sentence_embedding")
        return GraphInterface(model, names, outputs, (axes,) * len(names))
    if config.type_vocab_size > 0:
        names += ("token_type_ids",)
    output = "last_hidden_state" if isinstance(model, TextEncoder) else "logits"
    return GraphInterface(model, names, (output,), (axes,) * len(names))


def example_inputs(
    model: Exportable,
    batch_size: int = EXAMPLE_BATCH,
    seq_len: int | None = None,
    *,
    padded: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A batch for ``model``'s graph, keyed by input name: random ids (or pixels) and, when
    ``padded``, right padding whose length grows by one token per row (row 0 unpadded, no row
    empty). ``seq_len`` defaults to 8, or the model's max_positions if shorter; images have the
    model's image size."""
    check_exportable(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    generator = torch.Generator().manual_seed(seed)
    if isinstance(model, (VisionEncoder, ImageClassifier)):
        if seq_len is not None:
            raise ValueError(f"seq_len applies to text models, got {seq_len!r} for an image one")
        vc = (model if isinstance(model, VisionEncoder) else model.encoder).config
        shape = (batch_size, vc.num_channels, vc.image_size, vc.image_size)
        return {"pixel_values": torch.randn(shape, generator=generator)}
    text = model.model if isinstance(model, SentenceEncoder) else _text_encoder(model)
    tc: TextConfig = text.config
    limit = tc.longest_input  # None: rotary / ALiBi positions, any length
    T = min(EXAMPLE_SEQ_LEN, limit or EXAMPLE_SEQ_LEN) if seq_len is None else seq_len
    if isinstance(T, bool) or not isinstance(T, int) or T < 1 or (limit and T > limit):
        allowed = "an int >= 1" if limit is None else f"an int in [1, {limit}]"
        raise ValueError(
            f"seq_len must be {allowed} (the tokens the model's positions cover), got {seq_len!r}"
        )
    lengths = torch.tensor([max(T - row, 1) if padded else T for row in range(batch_size)])
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, 1) vs (1, T) -> (B, T)
    ids = torch.randint(0, tc.vocab_size, (batch_size, T), generator=generator)
    batch = {
        "input_ids": ids.masked_fill(~mask, tc.pad_token_id),
        "attention_mask": mask.long(),
    }
    if "token_type_ids" in graph_interface(model).inputs:
        # the second half of each sequence in segment 1, when the model has two segments
        second = (torch.arange(T) >= T // 2)[None, :] & mask & (tc.type_vocab_size > 1)
        batch["token_type_ids"] = second.long()
    return batch


def export_program(
    model: Exportable, path: str | os.PathLike[str] | None = None
) -> ExportedProgram:
    """``model``'s graph (see :func:`graph_interface`) as a ``torch.export`` program with dynamic
    batch and sequence axes; saved atomically to ``path`` (a .pt2 file) when one is given.

    Call it as the model: ``program.module()(input_ids, attention_mask)``; a sentence encoder's
    program returns ``(last_hidden_state, sentence_embedding)``. Load a saved one with
    ``torch.export.load(path)``.
    """
    check_exportable(model)
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if Path(path).suffix != ".pt2":
            raise ValueError(f"path must name a .pt2 file (torch.export's archive), got {path}")
    interface, example = graph_interface(model), example_inputs(model)
    args = tuple(example[name] for name in interface.inputs)
    with inference_copy(interface.module) as module, quiet_export():
        program = torch.export.export(module, args, dynamic_shapes=interface.dynamic_shapes)
    if path is not None:
        atomic_write(path, lambda tmp: _save_program(program, tmp))
    return program


def check_program(
    model: Exportable, program: ExportedProgram, batch: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """The largest absolute difference between ``program`` and ``model`` run eagerly (eval
    mode, float32, CPU) on ``batch`` (input name -> tensor), for each output."""
    eager = eager_outputs(model, batch)
    if not isinstance(program, ExportedProgram):
        raise TypeError(f"program must be an ExportedProgram, got {type(program).__name__}")
    inputs = graph_interface(model).inputs
    with torch.inference_mode():
        exported = as_tuple(program.module()(*(batch[name] for name in inputs)))
    if len(exported) != len(eager):
        raise ValueError(
            f"the program returns {len(exported)} outputs, not the {len(eager)} of a "
            f"{type(model).__name__}: was it exported from another kind of model?"
        )
    return {name: max_abs_diff(a, b) for (name, b), a in zip(eager.items(), exported, strict=True)}


def eager_outputs(model: Exportable, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ``model``'s graph computes on ``batch`` (input name -> tensor), run eagerly in eval
    mode, float32, on the CPU: the reference an exported graph is checked against."""
    interface = graph_interface(model)
    if not isinstance(batch, Mapping) or sorted(batch) != sorted(interface.inputs):
        got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(
            f"batch must hold the inputs {list(interface.inputs)} of a "
            f"{type(model).__name__}, got {got}"
        )
    with inference_copy(interface.module) as module, torch.inference_mode():
        outputs = module(*(batch[name] for name in interface.inputs))
    return dict(zip(interface.outputs, as_tuple(outputs), strict=True))


def as_tuple(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _save_program(program: ExportedProgram, tmp: Path) -> None:
    # An open file, not the temporary name, which lacks the .pt2 ending torch.export asks for.
    with open(tmp, "wb") as f:
        torch.export.save(program, f)


def check_exportable(model: object) -> None:
    if not isinstance(model, EXPORTABLE):
        names = ", ".join(kind.__name__ for kind in EXPORTABLE[:-1])
        raise TypeError(
            f"expected a {names} or {EXPORTABLE[-1].__name__} to export, got {type(model).__name__}"
        )


def _text_encoder(model: TextModel) -> TextEncoder:
    return model if isinstance(model, TextEncoder) else model.encoder


@contextmanager
def inference_copy(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode, float32, on the CPU, for tracing or as the eager reference.

    A model already in float32 on the CPU is used as is and its modules' training flags are put
    back afterwards; any other is copied first, so the caller's model never changes.
    """
    if any(
        t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32)
        for t in chain(model.parameters(), model.buffers())
    ):
        # converting in place would change the caller's model
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def quiet_export() -> Iterator[None]:
    """Silence what torch's exporters warn about themselves on every export: a deprecation
    inside torch's pytree code, and the ONNX exporter noting that inputs sharing the batch and
    sequence axes share their names (which is what we asked)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message=r"# The axis name: \w+ will not be used, since it shares the same shape",
            category=UserWarning,
        )
        yield
