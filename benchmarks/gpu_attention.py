"""``benchmarks.gpu``'s attention section: attention alone at long T (2,048 and 8,192; 12 heads x
64, bf16), forward and forward + backward: ``scaled_dot_product_attention`` fused on one sequence,
``varlen_attention`` on one packed sequence and on four, and the math path at the shortest T only.
Peak memory above the inputs must stay O(T), and the packed paths must agree with the dense one.

Shape legend: T tokens, H heads, K head width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from benchmarks.gates import rel_rms
from benchmarks.gpu_bench import (
    BF16_TOL,
    Bench,
    Row,
    Section,
    free_memory,
    guarded,
    record,
    runnable,
    skip,
)
from benchmarks.gpu_report import log_rows
from benchmarks.measure import time_round_robin
from benchmarks.steps import attention_call
from encoderkit import scaled_dot_product_attention
from encoderkit.layers.packing import Packing
from encoderkit.layers.varlen import pick_varlen_kernel, varlen_attention

MEMORY_FRACTION = 0.25  # extra attention memory at the largest T / one T x T x H bf16 tensor
MEMORY_EXPONENT = 1.5  # growth of that memory with T: 1 is O(T), 2 is O(T^2)
MEMORY_MIN_T = 1024  # below, a kernel's O(T) buffers are about as large as one T x T x H tensor
ATTENTION_BACKWARD = 2.5  # kernel convention: backward FLOPs = 2.5 x forward (recompute)


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AttentionCase:
    name: str  # the same at every T, so memory can be followed across T
    fn: AttentionFn
    inputs: tuple[torch.Tensor, ...]  # q, k, v: leaves that require grad
    lengths: tuple[int, ...]
    memory_checked: bool = True  # the math path is O(T^2) by design: reported, not checked


def run_attention(b: Bench, section: Section) -> None:
    """Each attention path at each T: forward and forward + backward, time and peak memory."""
    memory: dict[tuple[str, str], dict[int, int]] = {}  # (case, mode) -> {T: extra bytes}
    for T in b.sizes.attention_lengths:
        b.log(f"attention T = {T}, {b.sizes.heads} heads x {b.sizes.head_dim}, bf16")
        with guarded(b, section, f"attention T={T}"):
            cases = attention_cases(b, T)
            with guarded(b, section, f"attention T={T}: agreement"):
                _check_attention_agreement(b, section, cases, T)
            checked = {c.name for c in cases if c.memory_checked}
            for mode in ("fwd", "fwd+bwd"):
                rows = time_attention(b, section, cases, T, mode)
                section.rows += rows
                log_rows(b, rows)
                for row in rows:
                    if row.memory_bytes is not None and row.contender in checked:
                        memory.setdefault((row.contender, mode), {})[T] = row.memory_bytes
        free_memory(b.device)
    longest = max(b.sizes.attention_lengths)
    if not b.cuda:
        skip(b, section, "attention memory O(T)", "needs CUDA")
    elif longest < MEMORY_MIN_T:
        why = f"below T = {MEMORY_MIN_T} O(T) buffers are as large as T x T ones"
        skip(b, section, "attention memory O(T)", why)
    else:
        for (name, mode), by_length in sorted(memory.items()):
            _check_memory(b, section, f"{name}, {mode}", by_length, longest)


def attention_cases(b: Bench, T: int) -> list[AttentionCase]:
    """The paths at one T: batch 1 dense, and packed as one sequence and as four."""
    H, K, dev = b.sizes.heads, b.sizes.head_dim, b.device
    g = torch.Generator().manual_seed(T)
    dense = tuple(
        torch.randn(1, H, T, K, generator=g).to(dev, torch.bfloat16).requires_grad_()
        for _ in range(3)
    )  # 3 x (1, H, T, K)
    packed = tuple(
        t.detach()[0].transpose(0, 1).contiguous().requires_grad_() for t in dense
    )  # (1, H, T, K) -> (T, H, K): the same tokens, packed
    four = (3 * T // 8, T // 4, T // 4, T - 3 * T // 8 - 2 * (T // 4))
    one_pack, four_pack = _packing((T,), dev), _packing(four, dev)
    auto = pick_varlen_kernel(packed[0], 0.0)
    cases = [
        AttentionCase(
            "sdpa fused, 1 x T",
            lambda q, k, v: scaled_dot_product_attention(q, k, v, backend="fused"),
            dense,
            (T,),
        ),
        AttentionCase(
            f"varlen_attention {auto}, 1 seq",
            lambda q, k, v: varlen_attention(q, k, v, one_pack),
            packed,
            (T,),
        ),
        AttentionCase(
            f"varlen_attention {auto}, 4 seqs",
            lambda q, k, v: varlen_attention(q, k, v, four_pack),
            packed,
            four,
        ),
        AttentionCase(
            "varlen_attention repad, 4 seqs",
            lambda q, k, v: varlen_attention(q, k, v, four_pack, kernel="repad"),
            packed,
            four,
        ),
    ]
    if T <= b.sizes.math_max_len:
        cases.append(
            AttentionCase(
                "math, 1 x T",
                lambda q, k, v: scaled_dot_product_attention(q, k, v, backend="math"),
                dense,
                (T,),
                memory_checked=False,
            )
        )
    return cases


def _packing(lengths: Sequence[int], device: torch.device) -> Packing:
    real = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    return Packing.from_mask(real.to(device))


def _check_attention_agreement(
    b: Bench, section: Section, cases: Sequence[AttentionCase], T: int
) -> None:
    """The packed paths give what the dense one gives on the same tokens."""
    with torch.no_grad():
        outs = {c.name: c.fn(*c.inputs) for c in cases}
    dense = outs[cases[0].name][0].transpose(0, 1)  # (1, H, T, K) -> (T, H, K)
    one, four, repad = (outs[c.name] for c in cases[1:4])
    name = f"T={T}: {cases[1].name} vs sdpa fused"
    record(b, section, name, "rel RMS", rel_rms(one, dense), BF16_TOL)
    name = f"T={T}: {cases[2].name} vs repad"
    record(b, section, name, "rel RMS", rel_rms(four, repad), BF16_TOL)


def time_attention(
    b: Bench, section: Section, cases: Sequence[AttentionCase], T: int, mode: str
) -> list[Row]:
    """Time every case in turn; then, on CUDA, each one's peak memory above its inputs."""
    case = f"attention T={T} {mode}"
    calls = runnable(
        b, section, case, {c.name: attention_call(c.fn, c.inputs, mode == "fwd+bwd") for c in cases}
    )
    times = time_round_robin(calls, b.sizes.warmup, b.sizes.repeats["attention"], b.sync)
    scores_bytes = T * T * b.sizes.heads * 2  # one (T, T, H) bf16 tensor
    rows = []
    for c in (c for c in cases if c.name in calls):
        forward = 4 * b.sizes.head_dim * b.sizes.heads * sum(s * s for s in c.lengths)
        flops = forward * (1 + ATTENTION_BACKWARD) if mode == "fwd+bwd" else forward
        ms = [t * 1e3 for t in times[c.name]]
        row = Row(case, c.name, ms, T, "tok", flops, b.ceiling(), b.peak)
        if b.cuda:
            extra = peak_extra_bytes(b.device, calls[c.name])
            row.memory_bytes, row.memory_ratio = extra, extra / scores_bytes
        rows.append(row)
    return rows


def _check_memory(
    b: Bench, section: Section, name: str, by_length: Mapping[int, int], hi: int
) -> None:
    """O(T): a small share of one T x T x H tensor at the largest T, and near-linear growth."""
    if hi not in by_length:
        skip(b, section, f"{name}: memory", f"not measured at T={hi}")
        return
    lo = min(by_length)
    ratio = by_length[hi] / (hi * hi * b.sizes.heads * 2)
    metric = "/ one T x T x H bf16 tensor"
    record(b, section, f"{name}: extra memory at T={hi}", metric, ratio, MEMORY_FRACTION)
    if hi > lo and by_length[lo] > 0 and by_length[hi] > 0:
        exponent = math.log(by_length[hi] / by_length[lo]) / math.log(hi / lo)
        name = f"{name}: memory growth T={lo}..{hi}"
        record(b, section, name, "exponent", exponent, MEMORY_EXPONENT)


def peak_extra_bytes(device: torch.device, call: Callable[[], object]) -> int:
    """Peak CUDA memory allocated during ``call`` above what was allocated before it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
