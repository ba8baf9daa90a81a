"""encoderkit against its peers on the same work, measured in one process.

    python -m benchmarks.compare                 # MiniLM inference + training, BERT-base inference
    python -m benchmarks.compare --quick         # MiniLM only, fewer repeats
    python -m benchmarks.compare --all --markdown table.md --json rows.json
    python -m benchmarks.compare --quick --compile   # with whole-model torch.compile rows

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

``--compile`` adds a whole-model ``torch.compile`` copy of encoderkit and of each group's peer at
its best (``nn.TransformerEncoder``, HF sdpa) beside the eager ones, each with its own weights and
optimizer. Their "compile s" is the time of their first calls (the checked run and, for training,
the first train-mode step), compiling included, reported apart from the timed runs.

FLOPs count real tokens only (perf-anchors section 1): per layer forward, 8 d^2 + 4 d f per token
and 4 d s^2 per sequence of s tokens, times 3 for a training step. MFU divides by an fp32 matmul
ceiling timed in the same run. Contenders are timed in turn (A B C, A B C, ...), so a change in the
machine's load falls on all of them alike.

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.flags import comma_list, positive_int, probability
from benchmarks.measure import (
    OURS,
    TRAIN_FLOPS_FACTOR,
    Timed,
    forward_flops,
    is_ours,
    matmul_ceiling,
    time_round_robin,
    timed,
    with_speedups,
)
from benchmarks.peers import DROPOUT, Group, encoder_group, state_copy, text_group, with_compiled
from benchmarks.report import machine_info, ms, publish, spread, table
from benchmarks.steps import (
    adamw,
    check_inference,
    check_training,
    inference_call,
    make_target,
    training_call,
)
from benchmarks.workloads import SHAPES, Batch, Shape, make_batches

MODES = ("infer", "train")
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


# Rows and the run


@dataclass
class Row(Timed):
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
    compile_s: float | None = None  # compiled rows: their first calls, compiling included

    @property
    def ours(self) -> bool:
        return is_ours(self.contender)

    @property
    def tokens_per_s(self) -> float:
        return self.per_second(self.real_tokens)

    @property
    def mfu(self) -> float:
        return self.flops_per_s / self.ceiling_flops_per_s

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
    compiled: str | None = None  # torch.compile's backend, when compiled rows were added

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
    compile: str | None = None,
) -> Report:
    """Check, then time every contender of every shape, mode and batch in ``plan``.

    The check's run is the first warm-up; ``warmup`` adds rounds. Rows come in table order:
    shape, mode, batch, then the encoder and text-model groups. ``compile`` (a ``torch.compile``
    backend, "inductor" on the command line) adds whole-model compiled copies of encoderkit and
    of each group's fastest peer (``peers.with_compiled``); they compile in their first calls,
    before the timed runs, and report that time apart.
    """
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
        if compile is not None:
            groups = [with_compiled(g, compile) for g in groups]
        # Every training row starts from these weights (copies take seconds at BERT-base).
        training = "train" in repeats
        fresh = [[state_copy(c.model) for c in g.contenders] if training else [] for g in groups]
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
    mask, real = batch.mask, batch.real
    grad_diffs: dict[str, float] = {}
    first: dict[str, float] = {}  # each contender's checked run, seconds
    if mode == "infer":
        out_diffs = check_inference(group, batch, inputs, first)
        for c in group.contenders:
            c.model.eval()
        calls = {c.name: inference_call(c.forward, inputs, mask) for c in group.contenders}
    else:
        target = make_target(batch, shape.d_model)
        optimizers = {c.name: adamw(c.model, lr=1e-5) for c in group.contenders}
        out_diffs, grad_diffs = check_training(group, batch, inputs, target, optimizers, first)
        for c in group.contenders:
            c.model.train()
        calls = {
            c.name: training_call(c.forward, inputs, mask, real, target, optimizers[c.name])
            for c in group.contenders
        }
        for c in group.contenders:  # the train-mode graph compiles in its first step
            if c.compiled:
                first[c.name] += timed(calls[c.name])[1]
    compiled = {c.name for c in group.contenders if c.compiled}
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
            compile_s=first[name] if name in compiled else None,
        )
        for name, ts in times.items()
    ]
    return with_speedups(rows)


# Reporting


def header(report: Report) -> str:
    m = report.machine
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['threads']} threads), transformers {m['transformers']}, Python {m['python']}, "
        f"{m['date']}. fp32 matmul ceiling ({report.ceiling_n}^3, best of 10) "
        f"{report.ceiling_flops_per_s / 1e9:.1f} GFLOP/s. Training dropout {report.dropout:g}. "
        + (
            f"Compiled rows: whole-model `torch.compile` ({report.compiled}); their compile s is "
            "the time of their first calls, compiling included. "
            if report.compiled
            else ""
        )
        + f"Run took {report.seconds:.0f} s."
    )


def markdown_table(rows: Sequence[Row]) -> str:
    columns = (
        "shape | batch | mode | model | contender | median ms | min-max ms (runs) | real tok/s "
        "| encoderkit speed-up | MFU | out diff | grad diff (rel) | compile s"
    ).split(" | ")
    cells = []
    for r in rows:
        speedup = f"**{r.speedup:.2f}x** vs best peer" if r.ours else f"{r.speedup:.2f}x"
        cells.append(
            [
                r.shape,
                r.batch,
                r.mode,
                r.level,
                r.contender,
                ms(r.median_ms),
                spread(r.times_ms),
                f"{r.tokens_per_s:,.0f}",
                speedup,
                f"{r.mfu:.1%}",
                "ref" if r.contender == OURS else _diff(r.out_diff),
                "ref" if r.contender == OURS and r.mode == "train" else _diff(r.grad_diff),
                "" if r.compile_s is None else f"{r.compile_s:.1f}",
            ]
        )
    return "\n".join(table(columns, "lllllrrrrrrrr", cells))


def _diff(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


# Command line


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
        help="add whole-model torch.compile rows of encoderkit, nn.TransformerEncoder and HF "
        "sdpa, compile time apart (needs a C++ compiler on CPU; about 20 s a model and mode)",
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
        compile="inductor" if args.compile else None,
    )
    text = header(report) + "\n\n" + markdown_table(report.rows) + "\n"
    publish(text, report.as_dict(), args.markdown, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
