"""``benchmarks.gpu``'s compare section: ``benchmarks.compare``'s two groups (encoderkit
``Encoder`` vs ``nn.TransformerEncoder``; ``TextEncoder`` vs HF ``BertModel`` sdpa and eager) on the
device: bf16 inference, then a training step under bf16 autocast; and the issue's speed targets.

Shape legend: B batch, T tokens, N real tokens, D model width, H heads, K head width.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_bench import (
    LR,
    Bench,
    Row,
    Section,
    each,
    free_memory,
    gated_rows,
    guarded,
    to_device,
)
from benchmarks.gpu_report import log_rows
from benchmarks.measure import OURS, TRAIN_FLOPS_FACTOR, forward_flops
from benchmarks.peers import Contender, Group, encoder_group, state_copy, text_group
from benchmarks.steps import (
    adamw,
    infer_once,
    inference_call,
    make_target,
    train_once,
    training_call,
)
from benchmarks.workloads import Batch, make_batches
from encoderkit.layers.varlen import pick_varlen_kernel


def run_compare(b: Bench, section: Section) -> None:
    """The groups compare.py races (``benchmarks.peers``) on the device: bf16 inference, then
    bf16-autocast training."""
    sz = b.sizes
    batches = make_batches(sz.batch_size, sz.seq_len, sz.min_len, seed=0)
    for batch in batches:
        share = batch.tokens / (len(batch.lengths) * batch.seq_len)
        section.info[f"{batch.kind} real share"] = round(share, 4)
        b.log(f"  {batch.kind} batch {len(batch.lengths)} x {batch.seq_len}: {share:.1%} real")
    q = torch.empty(1, 1, 1, device=b.device, dtype=torch.bfloat16)  # (N, H, K)
    kernels = f"inference {pick_varlen_kernel(q, 0.0)}, training {pick_varlen_kernel(q, b.dropout)}"
    section.notes.append(f"encoderkit's attention on the varlen batch: {kernels}")
    b.log(f"  encoderkit's varlen_attention kernel: {kernels}")
    groups = build_groups(b, section)
    states = [[state_copy(c.model) for c in g.contenders] for g in groups]
    for mode in ("infer", "train"):
        for batch in batches:
            for group, fresh in zip(groups, states, strict=True):
                case = f"{sz.shape.name} {batch.kind} {mode}, {group.level}"
                b.log(case)
                with guarded(b, section, case):
                    rows = time_group(b, section, case, group, fresh, batch, mode)
                    section.rows += rows
                    log_rows(b, rows)
                free_memory(b.device)
    section.info["targets"] = targets(section.rows, sz.shape.name)
    for t in section.info["targets"]:
        b.log(f"  target {t['what']}: {t['value']:.2f}x (>= {t['target']:g}x) {t['verdict']}")
    del groups, states
    free_memory(b.device)


def build_groups(b: Bench, section: Section) -> list[Group]:
    """The encoder and text-model groups, each built on its own, on the CPU in fp32."""
    groups = []
    with guarded(b, section, "build the encoder group"):
        groups.append(encoder_group(b.sizes.shape, dropout=b.dropout))
    with guarded(b, section, "build the text-model group"), tempfile.TemporaryDirectory() as tmp:
        groups.append(text_group(b.sizes.shape, Path(tmp), dropout=b.dropout))
    return groups


def time_group(
    b: Bench,
    section: Section,
    case: str,
    group: Group,
    fresh: Sequence[Mapping[str, torch.Tensor]],
    batch: Batch,
    mode: str,
) -> list[Row]:
    """Give every contender the same starting weights, gate, then time one case.

    A contender whose gated run raises is reported and left out; the others are still timed.
    """
    dtype = torch.bfloat16 if mode == "infer" else torch.float32
    for c, state in zip(group.contenders, fresh, strict=True):
        c.model.to(b.device, torch.float32).load_state_dict(state)
        c.model.to(dtype)
    inputs = to_device(group.make_inputs(batch), b.device, dtype)
    mask = None if batch.mask is None else batch.mask.to(b.device)
    real = batch.real.to(b.device)
    contenders = {c.name: c for c in group.contenders}
    calls: dict[str, Callable[[], None]] = {}
    if mode == "infer":
        outs = each(b, section, case, contenders, lambda _, c: infer_once(c, inputs, mask, real))
        grads: dict[str, torch.Tensor] = {}
        for name in outs:
            calls[name] = inference_call(contenders[name].forward, inputs, mask)
    else:
        target = make_target(batch, b.sizes.shape.d_model).to(b.device)
        optimizers = {c.name: adamw(c.model, LR) for c in group.contenders}

        def once(name: str, c: Contender) -> tuple[torch.Tensor, torch.Tensor]:
            return train_once(c, inputs, mask, real, target, optimizers[name], torch.bfloat16)

        results = each(b, section, case, contenders, once)
        outs = {name: out for name, (out, _) in results.items()}
        grads = {name: grad for name, (_, grad) in results.items()}
        for name in results:
            c = contenders[name]
            c.model.train()
            calls[name] = training_call(
                c.forward, inputs, mask, real, target, optimizers[name], torch.bfloat16
            )
    s = b.sizes.shape
    flops = forward_flops(s.n_layers, s.d_model, s.d_ff, batch.lengths)
    flops *= TRAIN_FLOPS_FACTOR if mode == "train" else 1
    per_call = (batch.tokens, "tok")
    return gated_rows(b, section, case, "output", outs, grads, calls, mode, per_call, flops)


def targets(rows: Sequence[Row], shape: str) -> list[dict[str, Any]]:
    """The issue's speed targets, where the rows to judge them are there."""
    by_key = {(r.case, r.contender): r for r in rows}
    found = []

    def add(what: str, value: float, target: float) -> None:
        verdict = "met" if value >= target else "missed"
        found.append({"what": what, "value": value, "target": target, "verdict": verdict})

    for batch in ("varlen", "dense"):
        case = f"{shape} {batch} train, text model"
        ours, sdpa = by_key.get((case, OURS)), by_key.get((case, "HF BertModel sdpa"))
        if ours and sdpa:
            add(f"{case}: vs HF sdpa", sdpa.median_ms / ours.median_ms, 1.3)
    for batch, target in (("varlen", 1.8), ("dense", 1.0)):
        for level in ("text model", "encoder"):
            ours = by_key.get((f"{shape} {batch} infer, {level}", OURS))
            if ours and math.isfinite(ours.speedup):
                add(f"{shape} {batch} infer, {level}: vs best peer", ours.speedup, target)
    return found
