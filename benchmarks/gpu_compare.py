"""``benchmarks.gpu``'s compare section: ``benchmarks.compare``'s two groups (encoderkit
``Encoder`` vs ``nn.TransformerEncoder``; ``TextEncoder`` vs HF ``BertModel`` sdpa and eager) on the
device: bf16 inference, then a training step under bf16 autocast; and the issue's speed targets.

Whole-model ``torch.compile`` copies race beside the eager contenders (``--compile``): by default
encoderkit's and ``nn.TransformerEncoder``'s in the encoder group's training cases, where the
issue's training targets are; with "all", also HF sdpa's, in every case. Each compiled row
reports its compile time (its first calls) and the graph breaks dynamo met.

Shape legend: B batch, T tokens, N real tokens, D model width, H heads, K head width.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from benchmarks.gpu_bench import (
    LR,
    Bench,
    Row,
    Section,
    each,
    free_memory,
    gated_rows,
    graph_breaks,
    guarded,
    to_device,
)
from benchmarks.gpu_report import log_rows, target, target_line
from benchmarks.measure import OURS, TRAIN_FLOPS_FACTOR, forward_flops, is_ours, timed
from benchmarks.peers import (
    COMPILED,
    TORCH,
    Contender,
    Group,
    encoder_group,
    only,
    state_copy,
    text_group,
    with_compiled,
)
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
    K = sz.shape.d_model // sz.shape.n_heads
    q = torch.empty(1, 1, K, device=b.device, dtype=torch.bfloat16)  # (N, H, K): what decides
    kernels = f"inference {pick_varlen_kernel(q, 0.0)}, training {pick_varlen_kernel(q, b.dropout)}"
    section.notes.append(f"encoderkit's attention on the varlen batch: {kernels}")
    b.log(f"  encoderkit's varlen_attention kernel: {kernels}")
    groups = build_groups(b, section)
    states = [{c.name: state_copy(c.model) for c in g.contenders} for g in groups]
    for mode in ("infer", "train"):
        for batch in batches:
            for group, fresh in zip(groups, states, strict=True):
                case = f"{sz.shape.name} {batch.kind} {mode}, {group.level}"
                b.log(case)
                if mode == "infer" and b.compile != "all":
                    group = only(group, lambda c: not c.compiled)
                with guarded(b, section, case):
                    rows = time_group(b, section, case, group, fresh, batch, mode)
                    section.rows += rows
                    log_rows(b, rows)
                free_memory(b.device)
    section.info["targets"] = targets(section.rows, sz.shape.name, b.dropout)
    for t in section.info["targets"]:
        b.log(target_line(t).strip())
    del groups, states
    free_memory(b.device)


def build_groups(b: Bench, section: Section) -> list[Group]:
    """The encoder and text-model groups, each built on its own, on the CPU in fp32, with the
    compiled copies ``b.compile`` asks for."""
    groups = []
    with guarded(b, section, "build the encoder group"):
        groups.append(encoder_group(b.sizes.shape, dropout=b.dropout))
    with guarded(b, section, "build the text-model group"), tempfile.TemporaryDirectory() as tmp:
        groups.append(text_group(b.sizes.shape, Path(tmp), dropout=b.dropout))
    return [with_compiled(g, b.sizes.compile_backend, compiled_names(b, g.level)) for g in groups]


def compiled_names(b: Bench, level: str) -> tuple[str, ...]:
    """The contenders of the group at ``level`` that get a compiled copy."""
    if b.compile == "all":
        return COMPILED
    if b.compile == "train" and level == "encoder":
        return (OURS, TORCH)
    return ()


Result = TypeVar("Result")


def time_group(
    b: Bench,
    section: Section,
    case: str,
    group: Group,
    fresh: Mapping[str, Mapping[str, torch.Tensor]],
    batch: Batch,
    mode: str,
) -> list[Row]:
    """Give every contender the same starting weights (``fresh``, by name), gate, then time one
    case.

    A contender whose gated run raises is reported and left out; the others are still timed.
    """
    dtype = torch.bfloat16 if mode == "infer" else torch.float32
    for c in group.contenders:
        c.model.to(b.device, torch.float32).load_state_dict(fresh[c.name])
        c.model.to(dtype)
    inputs = to_device(group.make_inputs(batch), b.device, dtype)
    mask = None if batch.mask is None else batch.mask.to(b.device)
    real = batch.real.to(b.device)
    contenders = {c.name: c for c in group.contenders}
    calls: dict[str, Callable[[], None]] = {}
    checked_s: dict[str, float] = {}  # the compiled contenders' checked runs

    def first(run: Callable[[str, Contender], Result]) -> Callable[[str, Contender], Result]:
        """``run``, timed and its graph breaks counted on the compiled contenders."""

        def wrapped(name: str, c: Contender) -> Result:
            breaks = graph_breaks()
            result, took = timed(lambda: run(name, c), b.sync)
            if c.compiled:
                checked_s[name] = took
                section.info.setdefault("graph breaks", {})[f"{case}: {name}"] = (
                    graph_breaks() - breaks
                )
            return result

        return wrapped

    if mode == "infer":
        outs = each(
            b, section, case, contenders, first(lambda _, c: infer_once(c, inputs, mask, real))
        )
        grads: dict[str, torch.Tensor] = {}
        for name in outs:
            calls[name] = inference_call(contenders[name].forward, inputs, mask)
    else:
        target = make_target(batch, b.sizes.shape.d_model).to(b.device)
        optimizers = {c.name: adamw(c.model, LR) for c in group.contenders}

        def once(name: str, c: Contender) -> tuple[torch.Tensor, torch.Tensor]:
            return train_once(c, inputs, mask, real, target, optimizers[name], torch.bfloat16)

        results = each(b, section, case, contenders, first(once))
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
    return gated_rows(
        b, section, case, "output", outs, grads, calls, mode, per_call, flops, checked_s
    )


def targets(rows: Sequence[Row], shape: str, dropout: float) -> list[dict[str, Any]]:
    """The issue's GPU targets for the compare section, where the rows to judge them are there;
    each judges encoderkit's fastest row of the case (eager or compiled) against the peer named.

    MFU counts real tokens only, against the datasheet peak where the GPU has one here (else
    the measured ceiling)."""
    found = []
    by_case: dict[str, list[Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)

    def fastest(case: str, ours: bool) -> Row | None:
        side = [r for r in by_case.get(case, []) if is_ours(r.contender) == ours]
        return min(side, key=lambda r: r.median_ms, default=None)

    for batch, wanted in (("dense", 0.45), ("varlen", 0.35)):
        case = f"{shape} {batch} train, encoder"
        ours = fastest(case, ours=True)
        if ours is not None:
            peak = ours.mfu_peak is not None
            mfu = ours.mfu_peak if ours.mfu_peak is not None else ours.mfu
            basis = "989 TFLOP/s" if peak else "the measured ceiling"
            what = f"{case} (dropout {dropout:g}): {ours.contender} MFU of {basis}"
            found.append(target(what, mfu, wanted, "%"))
    case = f"{shape} dense train, encoder"
    ours, peers = fastest(case, ours=True), {r.contender: r for r in by_case.get(case, [])}
    peer = peers.get(f"{TORCH} compiled") or peers.get(TORCH)
    if ours is not None and peer is not None:
        what = f"{case} (dropout {dropout:g}): {ours.contender} vs {peer.contender}"
        found.append(target(what, peer.median_ms / ours.median_ms, 1.25))
    for level in ("text model", "encoder"):
        case = f"{shape} varlen infer, {level}"
        ours, best = fastest(case, ours=True), fastest(case, ours=False)
        if ours is not None and best is not None:
            what = f"{case}: {ours.contender} vs the best peer ({best.contender})"
            found.append(target(what, best.median_ms / ours.median_ms, 2.0))
    return found
