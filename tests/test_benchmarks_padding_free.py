"""benchmarks/padding_free.py on a tiny encoder: every batch and mode gets a row, the packed and
padded models agree before they are timed, and the attention kernels it races compute the same."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from encoderkit import EncoderConfig

ROOT = str(Path(__file__).resolve().parents[1])  # benchmarks/ sits beside the package
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import padding_free  # noqa: E402
from encoderkit.layers.packing import Packing  # noqa: E402
from encoderkit.layers.varlen import varlen_attention  # noqa: E402

TINY = EncoderConfig(d_model=16, n_heads=2, d_ff=32, n_layers=1, dropout=0.0, attention_dropout=0.0)


def test_padded_vs_packed_rows_cover_every_batch_and_mode():
    rows = padding_free.padded_vs_packed(repeats=1, config=TINY)
    batches = [name for name, _ in padding_free.fill_batches()]
    assert [(r["batch"], r["mode"]) for r in rows] == [
        (b, m) for b in batches for m in ("infer", "train")
    ]
    fills = {r["batch"]: r["fill"] for r in rows}
    assert fills["16 x 128, one padded token"] == 2047 / 2048
    assert all(0 < r["padded_ms"] and 0 < r["padding_free_ms"] for r in rows)


def test_every_raced_attention_kernel_computes_the_same():
    rows = padding_free.attention_kernels(repeats=1, config=TINY)  # raises if a kernel differs
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"loop", "repad", "length groups of 4", "nested (jagged)"}
    assert min(r["vs_best"] for r in rows) == 1.0


def test_length_groups_equal_the_loop_kernel():
    real = torch.arange(6)[None, :] < torch.tensor([6, 1, 4, 0, 3])[:, None]
    packing = Packing.from_mask(real)
    q, k, v = (torch.randn(packing.num_tokens, 2, 4) for _ in range(3))
    expected = varlen_attention(q, k, v, packing, kernel="loop")
    got = padding_free._grouped_attention(q, k, v, packing, size=2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_markdown_has_both_tables():
    fill = {"batch": "b", "fill": 0.5, "mode": "infer", "padded_ms": 2.0, "padding_free_ms": 1.0,
            "speedup": 2.0}  # fmt: skip
    kernel = {"mode": "forward", "kernel": "loop", "ms": 1.0, "vs_best": 1.0}
    text = padding_free.markdown([fill], [kernel])
    assert "| b | 50% | infer | 2 | 1 | **2.00x** |" in text
    assert "| forward | loop | 1.0 | 1.00x |" in text
