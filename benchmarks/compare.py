"""encoderkit against its peers on the same work, measured in one process.

    python -m benchmarks.compare                 # MiniLM inference + training, BERT-base inference
    python -m benchmarks.compare --quick         # MiniLM only, fewer repeats
    python -m benchmarks.compare --all --markdown table.md --json rows.json

Two row groups per shape, mode and batch, each group on one set of weights:

* encoder: ``encoderkit.Encoder``, copied with ``Encoder.from_torch`` from the
  ``torch.nn.TransformerEncoder`` it races (post-norm, gelu, batch_first). In inference torch takes
  its fast path (eval, ``torch.inference_mode()``, nested tensors for the padded batch); in
  training it has none and runs in train mode like the others.
* text model: ``encoderkit.TextEncoder`` against Hugging Face ``BertModel`` with sdpa and with
  eager attention, both loaded from the directory ``encoderkit.save_pretrained`` wrote.

Batches are B=16 x T=128. "varlen": real lengths drawn uniformly from [32, 128] by a fixed seed,
right-padded, the padding mask passed to every contender. "dense": all 128 tokens real and no mask
passed, so each library runs its no-padding path. Inference is fp32, eval mode, under
``torch.inference_mode()``. A training step is forward, backward of the mean squared error of the
real tokens' hidden states to a fixed target, and an AdamW step, in train mode (dropout 0.1, as
BERT; ``--dropout`` changes it).

encoderkit runs padded batches padding-free (its default, ``EncoderConfig.padding_free``): the
real tokens are packed once and every matmul runs on them only. ``nn.TransformerEncoder``'s fast
path does the same with nested tensors, in inference only; Hugging Face computes on the padding.

Before any timing, each peer's output on the real tokens (and for training a weight gradient,
with dropout off) must agree with encoderkit's to 1e-4, or the run stops: the rows time the same
function. That checked run is also the warm-up. With dropout on they draw the same dropout masks
in kind (encoderkit's ``ff_dropout`` follows each peer: 0 like BERT's feed-forward, ``dropout``
like ``nn.TransformerEncoderLayer``'s), though not the same random numbers. Every contender steps
the same optimizer, ``torch.optim.AdamW(fused=True)`` (the default of Hugging Face's Trainer).

FLOPs count real tokens only (perf-anchors section 1): per layer forward, 8 d^2 + 4 d f per token
and 4 d s^2 per sequence of s tokens, times 3 for a training step. MFU divides by an fp32 matmul
ceiling timed in the same run. Contenders are timed in turn (A B C, A B C, ...), so a change in the
machine's load falls on all of them alike.

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoderkit import Encoder, TextConfig, TextEncoder, save_pretrained
from encoderkit.files import atomic_write_text

TOLERANCE = 1e-4  # fp32: max abs diff of outputs, and of gradients relative to their largest entry
TRAIN_FLOPS_FACTOR = 3  # backward is about twice the forward
MODES = ("infer", "train")
DROPOUT = 0.1
OURS = "encoderkit"


@dataclass(frozen=True)
class Shape:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    vocab_size: int = 30522
    max_positions: int = 512


SHAPES = {
    "minilm": Shape("MiniLM-L6", n_layers=6, d_model=384, n_heads=12, d_ff=1536),
    "bert-base": Shape("BERT-base", n_layers=12, d_model=768, n_heads=12, d_ff=3072),
}
# Timed runs per row after the checked warm-up run, per shape and mode. Measured on the 2-core
# development CPU: a round over the ten rows of one shape and mode takes about 3 s (MiniLM
# inference), 12 s (MiniLM training), 18 s (BERT-base inference) and 70 s (BERT-base training).
# The machine is shared and single runs spread by 10-40%, so --all takes more repeats (about 10
# minutes); the default plan fits in 2 minutes, so it leaves out BERT-base training and times
# BERT-base inference once. Named --shapes with --modes use REPEATS too.
REPEATS = {
    "minilm": {"infer": 9, "train": 5},
    "bert-base": {"infer": 3, "train": 3},
}
DEFAULT_PLAN = {"minilm": {"infer": 3, "train": 2}, "bert-base": {"infer": 1}}
QUICK_REPEATS = {"infer": 2, "train": 1}


@dataclass(frozen=True)
class Batch:
    kind: str  # "varlen" or "dense"
    lengths: tuple[int, ...]
    seq_len: int

    @property
    def real(self) -> torch.Tensor:
        """(B, T) bool, True = real token; right padding."""
        return torch.arange(self.seq_len)[None, :] < torch.tensor(self.lengths)[:, None]

    @property
    def mask(self) -> torch.Tensor | None:
        """What the contenders receive: the padding mask, or None when nothing is padded."""
        return None if min(self.lengths) == self.seq_len else self.real

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def make_batches(
    batch_size: int = 16, seq_len: int = 128, min_len: int = 32, seed: int = 0
) -> list[Batch]:
    """The variable-length batch (lengths uniform in [min_len, seq_len]) and the dense one."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, seq_len + 1, (batch_size,), generator=g).tolist()
    return [
        Batch("varlen", tuple(lengths), seq_len),
        Batch("dense", (seq_len,) * batch_size, seq_len),
    ]


def forward_flops(n_layers: int, d_model: int, d_ff: int, lengths: Sequence[int]) -> int:
    """Forward FLOPs of the encoder on real tokens, a multiply-add counting 2.

    Per layer: qkv 6 d^2 and output projection 2 d^2 per token, feed-forward 4 d f per token,
    attention scores and weighted sum 4 d s^2 per sequence of s tokens; norms, softmax and
    activations are left out (under 1%). For f = 4 d that is 24 T d^2 + 4 d sum(s_i^2).
    """
    d, f = d_model, d_ff
    tokens = sum(lengths)
    squares = sum(s * s for s in lengths)
    return n_layers * ((8 * d * d + 4 * d * f) * tokens + 4 * d * squares)


def matmul_ceiling(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an fp32 (n, n) @ (n, n) matmul: the best of ``repeats`` after one warm-up.

    The best, not the median: it is the ceiling, what this machine reaches when nothing else
    runs, and a model's median must not exceed it because the matmul met a busier moment.
    """
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    times = time_round_robin({"matmul": lambda: a @ b}, warmup=1, repeats=repeats)["matmul"]
    return 2 * n**3 / min(times)


# Contenders


@dataclass
class Contender:
    name: str
    model: nn.Module
    forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # -> (B, T, D)
    probe: nn.Parameter  # the weight whose gradient the training check compares


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

    def torch_forward(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return theirs(x, src_key_padding_mask=None if mask is None else ~mask)  # True = pad

    def make_inputs(batch: Batch) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1)
        return torch.randn(len(batch.lengths), batch.seq_len, d, generator=g)

    return Group(
        "encoder",
        [
            Contender(OURS, ours, ours, ours.blocks[0].attn.qkv.weight),
            Contender(
                "nn.TransformerEncoder",
                theirs,
                torch_forward,
                theirs.layers[0].self_attn.in_proj_weight,
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
    contenders = [Contender(OURS, ours, ours, ours.embeddings.tokens.weight)]
    for impl in ("sdpa", "eager"):
        # The weights are saved in float32, so they load as float32 under any transformers
        # default; no dtype argument, whose name changed in 4.56 (torch_dtype -> dtype).
        hf = BertModel.from_pretrained(directory, attn_implementation=impl, add_pooling_layer=False)
        if hf.dtype != torch.float32:
            raise MismatchError(f"HF BertModel {impl} loaded as {hf.dtype}, expected torch.float32")
        contenders.append(
            Contender(
                f"HF BertModel {impl}", hf, _hf_forward(hf), hf.embeddings.word_embeddings.weight
            )
        )

    def make_inputs(batch: Batch) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(1, shape.vocab_size, (len(batch.lengths), batch.seq_len), generator=g)
        return ids.masked_fill(~batch.real, config.pad_token_id)  # (B, T)

    return Group("text model", contenders, make_inputs)


def _hf_forward(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    def forward(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attention_mask = None if mask is None else mask.long()
        return model(input_ids=ids, attention_mask=attention_mask).last_hidden_state

    return forward


# The correctness gate


class MismatchError(RuntimeError):
    """A peer computes something other than encoderkit, so its row would not time the same work."""


def loss_on_real(hidden: torch.Tensor, real: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training step's loss: mean squared error to a fixed target on the real tokens.

    (Not the mean square of the states alone: after the last LayerNorm that is 1 for any input,
    and its gradient is rounding noise.)
    """
    return (hidden[real] - target).square().mean()  # (B, T, D)[(B, T)] -> (N_real, D)


def make_target(batch: Batch, d_model: int, seed: int = 2) -> torch.Tensor:
    """A fixed regression target for the real tokens: (N_real, D)."""
    return torch.randn(batch.tokens, d_model, generator=torch.Generator().manual_seed(seed))


def check_inference(group: Group, batch: Batch, inputs: torch.Tensor) -> dict[str, float]:
    """Max abs diff of each peer's output from encoderkit's on real tokens, run exactly as timed."""
    outs = {}
    for c in group.contenders:
        c.model.eval()
        with torch.inference_mode():
            outs[c.name] = c.forward(inputs, batch.mask)
    ref, real = outs[OURS], batch.real
    diffs = {name: (out[real] - ref[real]).abs().max().item() for name, out in outs.items()}
    del diffs[OURS]
    _gate(diffs, f"{group.level}, {batch.kind} batch, inference output")
    return diffs


def check_training(
    group: Group,
    batch: Batch,
    inputs: torch.Tensor,
    target: torch.Tensor,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """The training step's function with dropout off (eval mode, gradients on): each peer's
    output diff on real tokens, and its probe weight's gradient diff relative to the largest
    entry of encoderkit's.

    Given ``optimizers``, each contender then steps on the checked gradients, so the check is
    also the warm-up of the whole training step, optimizer state included.
    """
    outs, grads = {}, {}
    for c in group.contenders:
        c.model.eval()
        c.model.zero_grad(set_to_none=True)
        out = c.forward(inputs, batch.mask)
        loss_on_real(out, batch.real, target).backward()
        if c.probe.grad is None:
            raise MismatchError(f"{c.name}: the training loss gave no gradient to the probe weight")
        outs[c.name], grads[c.name] = out.detach(), c.probe.grad.clone()
        if optimizers is not None:
            optimizers[c.name].step()
        c.model.zero_grad(set_to_none=True)
    real, scale = batch.real, grads[OURS].abs().max().item()
    out_diffs = {n: (o[real] - outs[OURS][real]).abs().max().item() for n, o in outs.items()}
    grad_diffs = {n: (g - grads[OURS]).abs().max().item() / scale for n, g in grads.items()}
    del out_diffs[OURS], grad_diffs[OURS]
    _gate(out_diffs, f"{group.level}, {batch.kind} batch, training output")
    _gate(grad_diffs, f"{group.level}, {batch.kind} batch, training gradient (relative)")
    return out_diffs, grad_diffs


def _gate(diffs: dict[str, float], what: str) -> None:
    bad = [f"{name} differs by {diff:.3g}" for name, diff in diffs.items() if not diff < TOLERANCE]
    if bad:  # `not <` also catches NaN
        raise MismatchError(
            f"{what}: {'; '.join(bad)} from encoderkit (tolerance {TOLERANCE:g}); "
            f"these rows would not time the same work"
        )


# Timing


def time_round_robin(
    calls: dict[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each entry, interleaved A B C, A B C, ... after ``warmup`` rounds."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def inference_call(c: Contender, inputs: torch.Tensor, batch: Batch) -> Callable[[], object]:
    """A forward in eval mode under ``inference_mode``: the call the inference check made."""
    mask = batch.mask

    def run() -> None:
        with torch.inference_mode():
            c.forward(inputs, mask)

    return run


def training_call(
    c: Contender,
    inputs: torch.Tensor,
    batch: Batch,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> Callable[[], object]:
    """Forward, loss on the real tokens, backward, AdamW step (set train mode first)."""
    mask, real = batch.mask, batch.real

    def step() -> None:
        loss_on_real(c.forward(inputs, mask), real, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# Rows and the run


@dataclass
class Row:
    shape: str
    batch: str
    mode: str
    level: str
    contender: str
    times_ms: list[float]
    real_tokens: int
    flops: int  # per batch, real tokens only
    ceiling_flops_per_s: float
    out_diff: float | None = None  # None on encoderkit's own row: it is the reference
    grad_diff: float | None = None
    speedup: float = math.nan  # ours: best peer / ours; a peer: this peer / ours. > 1: we win

    @property
    def ours(self) -> bool:
        return self.contender == OURS

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / (self.median_ms / 1e3)

    @property
    def mfu(self) -> float:
        return self.flops / (self.median_ms / 1e3) / self.ceiling_flops_per_s

    def as_dict(self) -> dict[str, Any]:
        derived = {k: getattr(self, k) for k in ("ours", "median_ms", "tokens_per_s", "mfu")}
        return asdict(self) | derived


@dataclass
class Report:
    machine: dict[str, Any]
    ceiling_flops_per_s: float
    ceiling_n: int
    dropout: float
    rows: list[Row]
    seconds: float
    compiled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "ceiling_flops_per_s": self.ceiling_flops_per_s,
            "ceiling_n": self.ceiling_n,
            "dropout": self.dropout,
            "seconds": self.seconds,
            "compiled": self.compiled,
            "rows": [r.as_dict() for r in self.rows],
        }


Plan = Sequence[tuple[Shape, dict[str, int]]]  # each shape with its modes' repeat counts


def run(
    plan: Plan,
    batches: Sequence[Batch] | None = None,
    warmup: int = 0,
    ceiling_n: int = 2048,
    dropout: float = DROPOUT,
    log: Callable[[str], None] = lambda _: None,
    compile: bool = False,
) -> Report:
    """Check, then time every contender of every shape, mode and batch in ``plan``.

    The check's run is the first warm-up; ``warmup`` adds rounds. Rows come in table order:
    shape, mode, batch, then the encoder and text-model groups. ``compile`` compiles
    encoderkit's position-wise sublayers (``Encoder.compile_position_wise``) and adds a warm-up
    round, so compiling (train and eval graphs) happens before the timed runs.
    """
    warmup += compile
    start = time.perf_counter()
    batches = make_batches() if batches is None else batches
    ceiling = matmul_ceiling(ceiling_n)
    log(f"matmul ceiling: {ceiling / 1e9:.1f} GFLOP/s")
    rows: list[Row] = []
    for shape, repeats in plan:
        unknown = sorted(set(repeats) - set(MODES))
        if unknown:
            raise ValueError(f"modes must be among {MODES}, got {unknown}")
        with tempfile.TemporaryDirectory(prefix="encoderkit-bench-") as tmp:
            groups = [
                encoder_group(shape, dropout=dropout),
                text_group(shape, Path(tmp), dropout=dropout),
            ]
        if compile:
            for group in groups:
                ours = group.contenders[0].model
                encoder = ours if isinstance(ours, Encoder) else ours.encoder
                encoder.compile_position_wise()
        # Every training row starts from these weights (copies take seconds at BERT-base).
        training = "train" in repeats
        fresh = [[_copy_state(c.model) for c in g.contenders] if training else [] for g in groups]
        for mode in (m for m in MODES if m in repeats):  # inference first: it keeps the weights
            for batch in batches:
                for group, states in zip(groups, fresh, strict=True):
                    log(
                        f"[{time.perf_counter() - start:5.1f} s] {shape.name}, {mode}, "
                        f"{batch.kind} batch, {group.level}"
                    )
                    if mode == "train":
                        for c, state in zip(group.contenders, states, strict=True):
                            c.model.load_state_dict(state)
                    rows += _time_group(shape, group, batch, mode, warmup, repeats[mode], ceiling)
    seconds = time.perf_counter() - start
    return Report(machine_info(), ceiling, ceiling_n, dropout, rows, seconds, compile)


def _time_group(
    shape: Shape, group: Group, batch: Batch, mode: str, warmup: int, repeats: int, ceiling: float
) -> list[Row]:
    inputs = group.make_inputs(batch)
    grad_diffs: dict[str, float] = {}
    if mode == "infer":
        out_diffs = check_inference(group, batch, inputs)
        for c in group.contenders:
            c.model.eval()
        calls = {c.name: inference_call(c, inputs, batch) for c in group.contenders}
    else:
        target = make_target(batch, shape.d_model)
        optimizers = {
            c.name: torch.optim.AdamW(c.model.parameters(), lr=1e-5, fused=True)
            for c in group.contenders
        }
        out_diffs, grad_diffs = check_training(group, batch, inputs, target, optimizers)
        for c in group.contenders:
            c.model.train()
        calls = {
            c.name: training_call(c, inputs, batch, target, optimizers[c.name])
            for c in group.contenders
        }
    times = time_round_robin(calls, warmup, repeats)
    flops = forward_flops(shape.n_layers, shape.d_model, shape.d_ff, batch.lengths)
    flops *= TRAIN_FLOPS_FACTOR if mode == "train" else 1
    rows = [
        Row(
            shape.name,
            batch.kind,
            mode,
            group.level,
            name,
            [t * 1e3 for t in ts],
            batch.tokens,
            flops,
            ceiling,
            out_diffs.get(name),
            grad_diffs.get(name),
        )
        for name, ts in times.items()
    ]
    ours = rows[0].median_ms
    best_peer = min(r.median_ms for r in rows[1:])
    for r in rows:
        r.speedup = (best_peer if r.ours else r.median_ms) / ours
    return rows


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# Reporting


def machine_info() -> dict[str, Any]:
    import transformers

    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpu.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = cpu.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in cpu and "model" in cpu:
        name += f" (family {cpu['cpu family']}, model {cpu['model']})"
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def header(report: Report) -> str:
    m = report.machine
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['threads']} threads), transformers {m['transformers']}, Python {m['python']}, "
        f"{m['date']}. fp32 matmul ceiling ({report.ceiling_n}^3, best of 10) "
        f"{report.ceiling_flops_per_s / 1e9:.1f} GFLOP/s. Training dropout {report.dropout:g}. "
        + ("encoderkit compiled (`--compile`). " if report.compiled else "")
        + f"Run took {report.seconds:.0f} s."
    )


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| shape | batch | mode | model | contender | median ms | min-max ms (runs) | real tok/s "
        "| encoderkit speed-up | MFU | out diff | grad diff (rel) |",
        "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        speedup = f"**{r.speedup:.2f}x** vs best peer" if r.ours else f"{r.speedup:.2f}x"
        cells = [
            r.shape,
            r.batch,
            r.mode,
            r.level,
            r.contender,
            _ms(r.median_ms),
            f"{_ms(min(r.times_ms))}-{_ms(max(r.times_ms))} ({len(r.times_ms)})",
            f"{r.tokens_per_s:,.0f}",
            speedup,
            f"{r.mfu:.1%}",
            "ref" if r.ours else _diff(r.out_diff),
            "ref" if r.ours and r.mode == "train" else _diff(r.grad_diff),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _diff(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


# Command line


def comma_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list from {', '.join(allowed)}, got {text!r}"
            )
        return names

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="encoderkit vs torch.nn.TransformerEncoder and Hugging Face BertModel "
        "(sdpa, eager): same weights, same batches, one process. By default MiniLM inference "
        "and training and BERT-base inference (under 2 minutes on 2 cores); BERT-base training "
        "runs with --all, or when --shapes and --modes both name it.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="MiniLM only, fewer repeats (about 40 s)"
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="every shape in every mode, more repeats (about 10 minutes)",
    )
    parser.add_argument("--shapes", type=comma_list(tuple(SHAPES)), help=f"from {','.join(SHAPES)}")
    parser.add_argument("--modes", type=comma_list(MODES), help=f"from {','.join(MODES)}")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        help="timed runs per row after the checked warm-up run (default: "
        + "; ".join(f"{s} {r}" for s, r in DEFAULT_PLAN.items())
        + f"; with --all: {REPEATS['bert-base']} for BERT-base; --quick: {QUICK_REPEATS})",
    )
    parser.add_argument(
        "--dropout",
        type=probability,
        default=DROPOUT,
        help=f"dropout of every model, seen by the training rows (default {DROPOUT})",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every row as JSON")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile encoderkit's feed-forward and LayerNorms (needs a C++ compiler on CPU)",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="write the machine line and the table"
    )
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> list[tuple[Shape, dict[str, int]]]:
    """The shapes and modes the flags ask for, with their repeat counts."""
    names = args.shapes or (["minilm"] if args.quick else list(SHAPES))
    modes = args.modes or MODES
    if args.quick:
        tables = dict.fromkeys(SHAPES, QUICK_REPEATS)
    elif args.all or (args.shapes and args.modes):
        tables = REPEATS
    else:
        tables = DEFAULT_PLAN
    plan = []
    for name in names:
        counts = {m: args.repeats or tables[name][m] for m in modes if m in tables[name]}
        if counts:
            plan.append((SHAPES[name], counts))
    if not plan:
        raise SystemExit(
            "nothing to run: BERT-base training runs with --all, or with --shapes and --modes"
        )
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    import transformers

    args = parse_args(argv)
    plan = make_plan(args)
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars, one per model
    # torch's fast path announces its nested tensors on every padded call; we run it on purpose.
    warnings.filterwarnings(
        "ignore", message="The PyTorch API of nested tensors is in prototype stage"
    )
    report = run(
        plan,
        dropout=args.dropout,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        compile=args.compile,
    )
    text = header(report) + "\n\n" + markdown_table(report.rows) + "\n"
    print("\n" + text)
    if args.markdown is not None:
        atomic_write_text(args.markdown, text)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report.as_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
