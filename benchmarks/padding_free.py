"""Where padding-free execution pays, and which attention kernel to run on packed tokens.

    python -m benchmarks.padding_free              # about 2 minutes on 2 CPU cores
    python -m benchmarks.padding_free --markdown table.md

Two tables, both on one MiniLM-shaped ``Encoder`` (6 layers, d 384, 12 heads, ff 1536), fp32:

* padded vs padding-free, the same weights, over batches from nearly full to half empty: the
  benchmark's 16 x 128 batches with real lengths uniform in [lo, 128] for several lo, one with a
  single padded token, and many short sequences (64 x 32, lengths in [4, 32]), which is where a
  per-sequence kernel pays the most calls. Inference under ``inference_mode`` and a training step
  (forward, backward of the summed output, no optimizer), dropout off so both compute the same.
* the attention kernels of ``varlen_attention`` on the benchmark's variable-length batch, forward
  and forward + backward: ``loop`` (one fused call per sequence), ``repad`` (pad to the longest,
  one masked call), and two that are not in the library: length groups (sequences sorted by
  length, four per masked call, each padded to its group's longest) and nested tensors
  (``torch.nested`` jagged layout through ``F.scaled_dot_product_attention``). This is how the
  choice of ``loop`` on the CPU was made.

Contenders alternate (A B, A B, ...) after a warm-up; medians of the repeats.

Shape legend: B batch, T tokens, N real tokens, H heads, K head width, D model width.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from benchmarks.measure import time_round_robin
from benchmarks.report import machine_info, table
from benchmarks.steps import attention_call
from benchmarks.workloads import Batch, make_batches
from encoderkit import Encoder, EncoderConfig
from encoderkit.layers.packing import Packing
from encoderkit.layers.varlen import varlen_attention
from encoderkit.utils.files import atomic_write_text

CONFIG = dataclasses.replace(EncoderConfig.minilm_l6(), dropout=0.0, attention_dropout=0.0)


def fill_batches(seed: int = 0) -> list[tuple[str, Batch]]:
    """From nearly full to half empty, then many short sequences."""
    g = torch.Generator().manual_seed(seed)
    named = []
    for lo in (8, 32, 96):
        lengths = torch.randint(lo, 129, (16,), generator=g).tolist()
        named.append((f"16 x 128, lengths in [{lo}, 128]", Batch("varlen", tuple(lengths), 128)))
    named.append(("16 x 128, one padded token", Batch("varlen", (127,) + (128,) * 15, 128)))
    short = torch.randint(4, 33, (64,), generator=g).tolist()
    named.append(("64 x 32, lengths in [4, 32]", Batch("varlen", tuple(short), 32)))
    return named


def padded_vs_packed(repeats: int, config: EncoderConfig = CONFIG) -> list[dict[str, object]]:
    torch.manual_seed(0)
    packed = Encoder(config)
    padded = Encoder(dataclasses.replace(config, padding_free=False))
    padded.load_state_dict(packed.state_dict())
    models = {"padded": padded, "padding-free": packed}
    rows = []
    for name, batch in fill_batches():
        x = torch.randn(len(batch.lengths), batch.seq_len, config.d_model)
        mask = batch.real
        for mode in ("infer", "train"):
            calls = {k: _call(m, x, mask, mode) for k, m in models.items()}
            times = time_round_robin(calls, warmup=1, repeats=repeats)
            ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            rows.append(
                {
                    "batch": name,
                    "fill": batch.tokens / mask.numel(),
                    "mode": mode,
                    "padded_ms": ms["padded"],
                    "padding_free_ms": ms["padding-free"],
                    "speedup": ms["padded"] / ms["padding-free"],
                }
            )
    return rows


def _call(model: Encoder, x: torch.Tensor, mask: torch.Tensor, mode: str) -> Callable[[], object]:
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(x, mask)

        return infer
    model.train()

    def step() -> None:
        model(x, mask).sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def attention_kernels(repeats: int, config: EncoderConfig = CONFIG) -> list[dict[str, object]]:
    batch = make_batches()[0]
    packing = Packing.from_mask(batch.real)
    H, K = config.n_heads, config.head_dim
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(packing.num_tokens, H, K, generator=g) for _ in range(3)]  # 3 x (N, H, K)
    kernels: dict[str, Callable[..., torch.Tensor]] = {
        "loop": lambda q, k, v: varlen_attention(q, k, v, packing, kernel="loop"),
        "repad": lambda q, k, v: varlen_attention(q, k, v, packing, kernel="repad"),
        "length groups of 4": lambda q, k, v: _grouped_attention(q, k, v, packing, 4),
        "nested (jagged)": lambda q, k, v: _nested_attention(q, k, v, packing),
    }
    expected = kernels["loop"](*qkv)
    rows = []
    for mode in ("forward", "forward + backward"):
        calls = {}
        for name, kernel in kernels.items():
            diff = (kernel(*qkv) - expected).abs().max().item()
            if not diff < 1e-5:
                raise RuntimeError(f"attention kernel {name} differs from loop by {diff:.3g}")
            backward = mode != "forward"
            inputs = [t.clone().requires_grad_() for t in qkv] if backward else qkv
            calls[name] = attention_call(kernel, inputs, backward)
        times = time_round_robin(calls, warmup=1, repeats=repeats)
        best = min(statistics.median(v) for v in times.values())
        for name, ts in times.items():
            ms = statistics.median(ts) * 1e3
            rows.append({"mode": mode, "kernel": name, "ms": ms, "vs_best": ms / (best * 1e3)})
    return rows


def _grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, size: int
) -> torch.Tensor:
    """Sequences sorted by length, ``size`` at a time through the repad kernel."""
    order = sorted(range(packing.batch_size), key=lambda b: packing.lengths[b])
    cu = packing.cu_seqlens.tolist()
    out = torch.empty_like(q)
    for start in range(0, len(order), size):
        group = order[start : start + size]
        rows = torch.cat([torch.arange(cu[b], cu[b + 1]) for b in group])  # packed rows, (n,)
        lengths = torch.tensor([packing.lengths[b] for b in group])
        sub = Packing.from_mask(torch.arange(int(lengths.max()))[None, :] < lengths[:, None])
        part = varlen_attention(q[rows], k[rows], v[rows], sub, kernel="repad")  # (n, H, K)
        out = out.index_copy(0, rows, part)
    return out


def _nested_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing
) -> torch.Tensor:
    offsets = packing.cu_seqlens.long()

    def nest(t: torch.Tensor) -> torch.Tensor:  # (N, H, K) -> (B, H, s_b, K), jagged in s_b
        return torch.nested.nested_tensor_from_jagged(t, offsets=offsets).transpose(1, 2)

    out = F.scaled_dot_product_attention(nest(q), nest(k), nest(v))
    return out.transpose(1, 2).values()  # (B, s_b, H, K) -> (N, H, K)


def markdown(fills: Sequence[dict[str, object]], kernels: Sequence[dict[str, object]]) -> str:
    columns = (
        "batch | real tokens | mode | padded ms | padding-free ms | padding-free speed-up"
    ).split(" | ")
    cells = [
        [
            f"{r['batch']}",
            f"{r['fill']:.0%}",
            f"{r['mode']}",
            f"{r['padded_ms']:.0f}",
            f"{r['padding_free_ms']:.0f}",
            f"**{r['speedup']:.2f}x**",
        ]
        for r in fills
    ]
    lines = table(columns, "lrlrrr", cells)
    cells = [
        [f"{r['mode']}", f"{r['kernel']}", f"{r['ms']:.1f}", f"{r['vs_best']:.2f}x"]
        for r in kernels
    ]
    kernel_columns = ("attention on packed tokens", "kernel", "median ms", "vs fastest")
    lines += ["", *table(kernel_columns, "llrr", cells)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.padding_free",
        description="padded vs padding-free encoder, and the attention kernels on packed tokens",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (default 5)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*nested tensors.*prototype")
    info = machine_info()
    print(f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}", file=sys.stderr)
    text = markdown(padded_vs_packed(args.repeats), attention_kernels(args.repeats))
    print(text)
    if args.markdown:
        atomic_write_text(args.markdown, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
