"""How every benchmark here measures: interleaved timing, the matmul ceiling, FLOPs on real
tokens, and the statistics a row of timings reports (median, rates, speed-ups).

Shape legend: T tokens, D model width.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch

TRAIN_FLOPS_FACTOR = 3  # backward is about twice the forward
OURS = "encoderkit"

Result = TypeVar("Result")


def is_ours(name: str) -> bool:
    """encoderkit's rows: its eager one (``OURS``) and its variants ("encoderkit compiled")."""
    return name == OURS or name.startswith(OURS + " ")


def _nothing() -> None:
    pass


def timed(call: Callable[[], Result], sync: Callable[[], None] = _nothing) -> tuple[Result, float]:
    """``call``'s result and its seconds: how a first call, compiling included, is reported."""
    sync()
    start = time.perf_counter()
    result = call()
    sync()
    return result, time.perf_counter() - start


def time_round_robin(
    calls: Mapping[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    sync: Callable[[], None] = _nothing,
) -> dict[str, list[float]]:
    """Seconds per call of each entry, interleaved A B C, A B C, ... after ``warmup`` rounds.

    ``sync`` runs before and after each timed call (and after the warm-up): on a GPU it waits for
    the device, so a call's time is its kernels', not their launch's.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def matmul_ceiling(
    n: int = 2048,
    repeats: int = 10,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 1,
    sync: Callable[[], None] = _nothing,
) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul in ``dtype``: the best of ``repeats`` after warm-up.

    The best, not the median: it is the ceiling, what this machine reaches when nothing else
    runs, and a model's median must not exceed it because the matmul met a busier moment.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    times = time_round_robin({"matmul": lambda: a @ b}, warmup, repeats, sync)["matmul"]
    return 2 * n**3 / min(times)


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


class Timed:
    """What a row of timings reports, for the dataclasses that mix it in and hold these fields."""

    contender: str
    times_ms: list[float]
    flops: float  # per call
    speedup: float

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def per_second(self, amount: float) -> float:
        """``amount`` (tokens, images) per call, as a rate at the median time."""
        return amount / (self.median_ms / 1e3)

    @property
    def flops_per_s(self) -> float:
        return self.per_second(self.flops)


Row = TypeVar("Row", bound=Timed)


def with_speedups(rows: list[Row]) -> list[Row]:
    """Fill ``speedup``: on each of encoderkit's rows (eager, compiled) the best peer's median
    (compiled peers included) over its own; on a peer's, its median over encoderkit's eager row.
    > 1: encoderkit is faster. Left NaN where the other side did not run."""
    peers = [r for r in rows if not is_ours(r.contender)]
    eager = next((r for r in rows if r.contender == OURS), None)
    best = min((r.median_ms for r in peers), default=None)
    for r in rows:
        if is_ours(r.contender):
            if best is not None:
                r.speedup = best / r.median_ms
        elif eager is not None:
            r.speedup = r.median_ms / eager.median_ms
    return rows
