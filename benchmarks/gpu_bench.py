"""What every section of ``benchmarks.gpu`` shares: the sizes of the run (the real one's and the
smoke run's), its results (checks, rows, sections), the run's context (device, log, ceiling), and
the guards that report a failure and go on.

Shape legend: T tokens, H heads.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch

from benchmarks.gates import diffs_to_ours
from benchmarks.measure import OURS, Timed, matmul_ceiling, time_round_robin, timed, with_speedups
from benchmarks.workloads import SHAPES, Shape
from encoderkit import VisionConfig

DATASHEET_PEAK = 989e12  # dense bf16 FLOP/s, H100 / H200 SXM (perf-anchors section 0)
FP32_TOL = 1e-5  # max abs diff on real tokens; gradients relative to their largest entry
BF16_TOL = 3e-2  # relative RMS diff, ||a - ref|| / ||ref||; bf16 BERT-base measures about 1e-2
LR = 1e-5
# Which cases get whole-model torch.compile rows: "train", the encoder group's training cases
# (encoderkit and nn.TransformerEncoder, the training targets); "all", every case, with
# HF sdpa too; "none".
COMPILE_CHOICES = ("none", "train", "all")


@dataclass(frozen=True)
class Sizes:
    """Everything the sections' sizes depend on: the real run's or the smoke run's."""

    name: str
    shape: Shape  # correctness and compare
    batch_size: int
    seq_len: int
    min_len: int
    check_lengths: tuple[int, ...]  # the correctness section's padded batch
    warmup: int  # rounds before the timed ones, after the gate's run
    repeats: Mapping[str, int]  # timed runs per row: "infer", "train", "attention"
    vision: VisionConfig
    num_classes: int
    vit_batch: int
    timm_overrides: Mapping[str, Any]  # timm.create_model arguments that match ``vision``
    attention_lengths: tuple[int, ...]
    math_max_len: int  # the math path only up to this T
    heads: int
    head_dim: int
    ceiling_n: int
    ceiling_repeats: int
    compile_backend: str  # torch.compile's, for the compiled rows


# Repeats for the 8-minute budget on one H200, where a BERT-base 32 x 512 training step takes
# about 0.1-0.3 s and an inference 30-60 ms: the compare section's ~100 timed calls per case cost
# about a minute in all.
FULL = Sizes(
    name="full",
    shape=SHAPES["bert-base"],
    batch_size=32,
    seq_len=512,
    min_len=64,
    check_lengths=(512, 389, 256, 255, 128, 64, 17, 1),
    warmup=2,
    repeats={"infer": 20, "train": 10, "attention": 20},
    vision=VisionConfig.vit_base(),
    num_classes=1000,
    vit_batch=64,
    timm_overrides={},
    attention_lengths=(2048, 8192),
    math_max_len=2048,
    heads=12,
    head_dim=64,
    ceiling_n=8192,
    ceiling_repeats=10,
    compile_backend="inductor",
)
SMOKE = Sizes(
    name="smoke",
    shape=Shape(
        "tiny", n_layers=2, d_model=64, n_heads=4, d_ff=128, vocab_size=100, max_positions=32
    ),
    batch_size=4,
    seq_len=32,
    min_len=8,
    check_lengths=(32, 20, 9, 1),
    warmup=0,
    repeats={"infer": 1, "train": 1, "attention": 1},
    vision=VisionConfig(
        d_model=64,
        n_heads=4,
        d_ff=128,
        n_layers=2,
        dropout=0.0,
        attention_dropout=0.0,
        norm_first=True,
        layer_norm_eps=1e-6,
        image_size=32,
        patch_size=8,
    ),
    num_classes=10,
    vit_batch=4,
    timm_overrides={
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 2.0,
    },
    attention_lengths=(64, 128),
    math_max_len=64,
    heads=12,
    head_dim=64,
    ceiling_n=256,
    ceiling_repeats=3,
    # dynamo traces the models as on the GPU, without generating code: seconds, not minutes
    compile_backend="eager",
)

# Results


@dataclass
class Check:
    """One comparison against a tolerance; ``passed`` None means skipped."""

    name: str
    metric: str
    value: float | None
    tolerance: float | None
    passed: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "ok", False: "FAILED", None: "skipped"}[self.passed]


@dataclass
class Row(Timed):
    """One contender's timings on one case."""

    case: str
    contender: str
    times_ms: list[float]
    items: int  # real tokens (or images) per call
    unit: str  # "tok" or "img"
    flops: float  # per call, real tokens only
    ceiling: float  # measured matmul FLOP/s
    peak: float | None  # datasheet FLOP/s, where the GPU has one here
    out_diff: float | None = None  # None on the reference row
    grad_diff: float | None = None
    speedup: float = math.nan  # ours: best peer / ours; a peer: this peer / ours. > 1: we win
    memory_bytes: int | None = None  # attention: peak allocated above the inputs
    memory_ratio: float | None = None  # that, over one T x T x H bf16 tensor
    compile_s: float | None = None  # compiled rows: their first calls, compiling included

    @property
    def per_s(self) -> float:
        return self.per_second(self.items)

    @property
    def tflops(self) -> float:
        return self.flops_per_s / 1e12

    @property
    def mfu(self) -> float:
        return self.tflops * 1e12 / self.ceiling

    @property
    def mfu_peak(self) -> float | None:
        return None if self.peak is None else self.tflops * 1e12 / self.peak

    def as_dict(self) -> dict[str, Any]:
        derived = {k: getattr(self, k) for k in ("median_ms", "per_s", "tflops", "mfu", "mfu_peak")}
        return asdict(self) | derived


@dataclass
class Section:
    name: str
    status: str = "not run"  # "ok", "error", "skipped"
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": self.seconds,
            "info": self.info,
            "checks": [asdict(c) | {"verdict": c.verdict} for c in self.checks],
            "rows": [r.as_dict() for r in self.rows],
            "notes": self.notes,
            "errors": self.errors,
        }


@dataclass
class Bench:
    """What every section needs: sizes, device, the log, the matmul ceiling (measured once)."""

    sizes: Sizes
    device: torch.device
    dropout: float
    compile: str = "train"  # one of COMPILE_CHOICES
    start: float = field(default_factory=time.perf_counter)
    ceiling_flops: float | None = None  # measured on first use

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def log(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f} s] {text}", flush=True)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @property
    def peak(self) -> float | None:
        """The datasheet's dense bf16 FLOP/s where this GPU is an H100 / H200 SXM."""
        if not self.cuda:
            return None
        name = torch.cuda.get_device_name(self.device)
        sxm = ("H100" in name or "H200" in name) and not ("PCIe" in name or "NVL" in name)
        return DATASHEET_PEAK if sxm else None

    def ceiling(self) -> float:
        if self.ceiling_flops is None:
            # bf16, the dtype every timed row runs in: the best of ``ceiling_repeats`` after
            # three warm-up rounds
            self.ceiling_flops = matmul_ceiling(
                self.sizes.ceiling_n,
                self.sizes.ceiling_repeats,
                device=self.device,
                dtype=torch.bfloat16,
                warmup=3,
                sync=self.sync,
            )
        return self.ceiling_flops


def record(
    b: Bench,
    section: Section,
    name: str,
    metric: str,
    value: float,
    tolerance: float,
    note: str = "",
) -> Check:
    """Append and print one check: passed when value <= tolerance (NaN fails)."""
    check = Check(name, metric, value, tolerance, bool(value <= tolerance), note)
    section.checks.append(check)
    extra = f" ({note})" if note else ""
    b.log(f"  {check.verdict:>7}  {name}: {metric} {value:.2e} (tol {tolerance:.0e}){extra}")
    return check


def skip(b: Bench, section: Section, name: str, why: str) -> None:
    """Record and print a check that cannot run here, and why."""
    section.checks.append(Check(name, "", None, None, None, why))
    b.log(f"  {'-':>7}  {name}: skipped: {why}")


@contextmanager
def guarded(b: Bench, section: Section, what: str) -> Iterator[None]:
    """Run one part of a section; if it raises, record a FAILED check and go on."""
    try:
        yield
    except Exception as e:  # a benchmark reports every failure and carries on
        message = f"{what}: {type(e).__name__}: {e}"
        section.errors.append(message)
        section.checks.append(Check(what, "raised", None, None, False, f"{type(e).__name__}: {e}"))
        b.log(f"   FAILED  {message}")
        print(traceback.format_exc(), flush=True)


Item = TypeVar("Item")
Result = TypeVar("Result")


def each(
    b: Bench,
    section: Section,
    case: str,
    contenders: Mapping[str, Item],
    run: Callable[[str, Item], Result],
) -> dict[str, Result]:
    """``run`` on each contender in turn, guarded: a failure is recorded and that one left out."""
    results = {}
    for name, contender in contenders.items():
        with guarded(b, section, f"{case}: {name}"):
            results[name] = run(name, contender)
    return results


def runnable(
    b: Bench,
    section: Section,
    case: str,
    calls: Mapping[str, Callable[[], None]],
    seconds: dict[str, float] | None = None,
) -> dict[str, Callable[[], None]]:
    """Each call once, guarded, in the mode it is timed in (so also the first warm-up round):
    one that raises is reported and left out of the timing. ``seconds`` gets each one's time."""

    def once(name: str, call: Callable[[], None]) -> None:
        took = timed(call, b.sync)[1]
        if seconds is not None:
            seconds[name] = took

    ran = each(b, section, f"{case}, timed call", calls, once)
    return {name: call for name, call in calls.items() if name in ran}


def gated_rows(
    b: Bench,
    section: Section,
    case: str,
    what: str,
    outs: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    calls: Mapping[str, Callable[[], None]],
    mode: str,
    per_call: tuple[int, str],
    flops: float,
    checked_s: Mapping[str, float] | None = None,
) -> list[Row]:
    """Record each peer's ``what`` (output, logits) and gradient against encoderkit's, then time
    the calls that run (``mode`` picks the repeats) as rows of ``per_call`` (count, unit) items.

    ``checked_s``: the compiled contenders' checked runs, seconds; their rows' compile time is
    that, plus in training the first train-mode step (a graph of its own)."""
    out_diffs, grad_diffs = diffs_to_ours(outs), diffs_to_ours(grads)
    for name, diff in out_diffs.items():
        record(b, section, f"{case}: {name} {what} vs {OURS}", "rel RMS", diff, BF16_TOL)
    for name, diff in grad_diffs.items():
        record(b, section, f"{case}: {name} grad vs {OURS}", "rel RMS", diff, BF16_TOL)
    repeats = b.sizes.repeats[mode]
    first: dict[str, float] = {}
    ran = runnable(b, section, case, calls, first)
    times = time_round_robin(ran, b.sizes.warmup, repeats, b.sync)
    items, unit = per_call
    rows = [
        Row(case, name, [t * 1e3 for t in ts], items, unit, flops, b.ceiling(), b.peak)
        for name, ts in times.items()
    ]
    for r in rows:
        r.out_diff, r.grad_diff = out_diffs.get(r.contender), grad_diffs.get(r.contender)
        if checked_s is not None and r.contender in checked_s:
            r.compile_s = checked_s[r.contender] + (first[r.contender] if mode == "train" else 0)
    return with_speedups(rows)


@contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32, so fp32 means fp32 in the checks.

    (Through the settings torch has had longest; mixing them with the newer ``fp32_precision``
    ones is an error in recent torch, and nothing here uses those.)"""
    if device.type != "cuda":
        yield
        return
    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = conv


def graph_breaks() -> int:
    """Graph breaks ``torch.compile`` has met in this process so far (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def to_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Floating inputs take ``dtype``; token ids keep theirs."""
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)
