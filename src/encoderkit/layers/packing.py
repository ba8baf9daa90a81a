"""Padding-free execution: the real tokens of a padded batch, packed into one (N, D) array.

Everything in an encoder block except attention works on each position alone (the qkv and output
projections, the feed-forward layer, LayerNorm, dropout, residuals), so it can run on the real
tokens only, wherever the padding was. Only attention needs to know which tokens form a sequence;
``cu_seqlens`` tells it (the layout of flash-attention's varlen kernels and
``torch.nn.attention.varlen``). The encoder packs once on the way in and unpacks once on the way
out (ModernBERT's unpad-once), so a batch with 30% padding does 30% less work in every matmul.

Shape legend: B batch, T tokens per padded row, N real tokens in the batch, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """Where the N real tokens of a (B, T) batch sit, and where each sequence starts and ends.

    Tokens keep their order: sequence 0's real tokens first, then sequence 1's, and so on, so
    any padding pattern (right, left, holes) packs the same way.
    """

    index: torch.Tensor  # (N,) int64: position of each real token in the flattened (B * T) batch
    cu_seqlens: torch.Tensor  # (B + 1,) int32: sequence b is packed rows cu[b] .. cu[b + 1]
    lengths: tuple[int, ...]  # real tokens per sequence, on the host
    seq_len: int  # T

    @classmethod
    def from_mask(cls, real: torch.Tensor) -> Packing:
        """From a checked (B, T) bool padding mask, True = real token."""
        if real.dtype != torch.bool or real.dim() != 2:
            raise ValueError(
                f"expected a (B, T) bool mask, got dtype {real.dtype} shape {tuple(real.shape)}"
            )
        per_row = real.sum(dim=1)  # (B,)
        cu_seqlens = torch.zeros(real.shape[0] + 1, dtype=torch.int32, device=real.device)
        cu_seqlens[1:] = per_row.cumsum(0)
        index = real.flatten().nonzero().squeeze(1)  # (B * T,) -> (N,)
        return cls(index, cu_seqlens, tuple(per_row.tolist()), real.shape[1])

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return self.index.numel()

    @property
    def max_len(self) -> int:
        return max(self.lengths, default=0)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...): the real tokens only."""
        self._check_padded(x)
        flat = x.flatten(0, 1)  # (B, T, ...) -> (B * T, ...)
        return flat.index_select(0, self.index)  # -> (N, ...)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), with exact zeros at the padded positions."""
        if x.dim() < 1 or x.shape[0] != self.num_tokens:
            raise ValueError(
                f"expected {self.num_tokens} packed tokens in dim 0, got shape {tuple(x.shape)}"
            )
        flat = x.new_zeros(self.batch_size * self.seq_len, *x.shape[1:])
        flat = flat.index_copy(0, self.index, x)  # (N, ...) -> (B * T, ...)
        return flat.view(self.batch_size, self.seq_len, *x.shape[1:])

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, ...) -> one (s_b, ...) view per sequence b, in batch order."""
        return x.split(self.lengths)

    def _check_padded(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or tuple(x.shape[:2]) != (self.batch_size, self.seq_len):
            raise ValueError(
                f"expected a padded batch (B, T, ...) = ({self.batch_size}, {self.seq_len}, ...), "
                f"got shape {tuple(x.shape)}"
            )
