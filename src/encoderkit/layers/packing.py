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
import torch.nn.functional as F
from torch.library import custom_op


@custom_op("encoderkit::real_token_index", mutates_args=())
def real_token_index(real: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (N,) int64: where the real tokens sit in the flattened (B * T) batch.

    An operator of its own because N depends on the mask's values: exported graphs and graphs
    compiled with ``fullgraph=True`` carry it as a size known only when the graph runs. A plain
    ``torch.compile(model)`` breaks the graph here unless dynamo's
    ``capture_dynamic_output_shape_ops`` is set.
    """
    return real.flatten().nonzero().squeeze(1)  # (B * T,) -> (N,)


@real_token_index.register_fake
def _(real: torch.Tensor) -> torch.Tensor:
    num_tokens = torch.library.get_ctx().new_dynamic_size()
    return real.new_empty(num_tokens, dtype=torch.int64)


@dataclass(frozen=True)
class Packing:
    """Where the N real tokens of a (B, T) batch sit, and where each sequence starts and ends.

    Tokens keep their order: sequence 0's real tokens first, then sequence 1's, and so on, so
    any padding pattern (right, left, holes) packs the same way. Built with device operations
    only; ``lengths``, ``max_len`` and ``split`` read the device and are for tools and tests, not
    for forwards.
    """

    index: torch.Tensor  # (N,) int64: position of each real token in the flattened (B * T) batch
    cu_seqlens: torch.Tensor  # (B + 1,) int32: sequence b is packed rows cu[b] .. cu[b + 1]
    batch_size: int  # B
    seq_len: int  # T
    # (N,) int64: each token's position in its sequence, counting real tokens from 0 (what
    # rotary positions rotate by), whatever the padding was
    positions: torch.Tensor

    @classmethod
    def from_mask(cls, real: torch.Tensor) -> Packing:
        """From a checked (B, T) bool padding mask, True = real token."""
        if real.dtype != torch.bool or real.dim() != 2:
            raise ValueError(
                f"expected a (B, T) bool mask, got dtype {real.dtype} shape {tuple(real.shape)}"
            )
        per_row = real.sum(dim=1, dtype=torch.int32)  # (B,)
        cu_seqlens = F.pad(per_row.cumsum(0, dtype=torch.int32), (1, 0))  # (B + 1,), from 0
        index = real_token_index(real)
        rank = real.cumsum(dim=1) - 1  # (B, T): real token r of its row is at r
        positions = rank.flatten().index_select(0, index)  # (B * T,) -> (N,)
        return cls(index, cu_seqlens, real.shape[0], real.shape[1], positions)

    @property
    def num_tokens(self) -> int:
        return self.index.shape[0]

    @property
    def lengths(self) -> tuple[int, ...]:
        """Real tokens per sequence (read from the device)."""
        return tuple(self.cu_seqlens.diff().tolist())

    @property
    def max_len(self) -> int:
        """The longest sequence (read from the device)."""
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
