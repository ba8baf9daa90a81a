"""What the benchmarks run on: the model shapes and the batches, real lengths fixed by a seed.

Shape legend: B batch, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
