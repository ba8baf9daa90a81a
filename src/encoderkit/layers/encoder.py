"""The encoder: N identical blocks (Vaswani et al. 2017, section 3.1), plus a final LayerNorm
when the blocks are pre-norm (ViT; ``nn.TransformerEncoder(norm=...)``), since pre-norm blocks
leave the residual stream unnormalised.

Padded batches run padding-free (``config.padding_free``, on by default): the real tokens are
packed once into (N, D), every block runs on them, and the output is unpacked once, so padding
costs no matmul (see :mod:`encoderkit.layers.packing`). With an ``attn_mask`` pattern, or with
``padding_free=False``, the blocks run on the padded batch under a key-padding mask instead.
Either way padded positions are never read (packed away, or replaced by zeros on the way in, since
a score mask alone lets NaN through: 0 * NaN is NaN) and the encoder returns exactly 0 there, as
torch's nested-tensor fast path does, so results never depend on what the padding holds.

Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"; Hugging
Face's ``gradient_checkpointing_enable``) is a training switch, not part of the architecture:
with ``encoder.gradient_checkpointing = True`` (or :func:`set_gradient_checkpointing`), a training
forward keeps only each block's input and recomputes the block in the backward pass, trading one
more forward for the activations of every block. The RNG state is replayed, so dropout draws the
same masks and the gradients equal the plain run's.

Shape legend: B batch, T tokens, N real tokens, D model width, H heads.
"""

from __future__ import annotations

import math
import typing

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from encoderkit.layers.block import EncoderBlock, torch_activation_name
from encoderkit.layers.config import EncoderConfig
from encoderkit.layers.masks import make_attention_mask, padding_mask_bool
from encoderkit.layers.packing import Packing
from encoderkit.utils.checks import check_hidden_states, check_input_dtype, tracing


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if not isinstance(config, EncoderConfig):
            raise TypeError(f"config must be an EncoderConfig, got {type(config).__name__}")
        self.config = config
        c = config
        if not c.first_attention_norm and not c.norm_first:
            raise ValueError(
                "first_attention_norm=False leaves out the first pre-norm block's attention "
                "LayerNorm, so it needs norm_first=True"
            )
        self.blocks = nn.ModuleList(
            EncoderBlock(
                c.d_model,
                c.n_heads,
                c.d_ff,
                dropout=c.dropout,
                activation=c.activation,
                norm_first=c.norm_first,
                layer_norm_eps=c.layer_norm_eps,
                attention_dropout=c.attention_dropout,
                bias=c.bias,
                attention_backend=c.attention_backend,
                ff_dropout=c.ff_dropout,
                qkv_bias=c.qkv_bias,
                attention_norm=c.first_attention_norm or i > 0,
                position_encoding=c.position_encoding,
                rope_base=c.local_rope_base
                if c.is_local(i) and c.local_rope_base is not None
                else c.rope_base,
                window=c.window if c.is_local(i) else None,
            )
            for i in range(c.n_layers)
        )
        self.norm = (
            nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
            if c.norm_first
            else nn.Identity()
        )
        self.apply(init_weights)
        # A training switch, not a config field: checkpoints and configs do not change with it
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D); ``attention_mask`` (B, T) True/1 = real token."""
        B, T, _ = check_hidden_states(x, self.config.d_model).shape
        check_input_dtype(x, next(self.parameters()).dtype)
        real = None if attention_mask is None else padding_mask_bool(attention_mask, B, T)
        if real is not None and not tracing() and bool(real.all()):
            real = None  # nothing is padded: no mask at all (eager only: a trace keeps the mask)
        if real is not None and attn_mask is None and self.config.padding_free and not _onnx():
            packing = Packing.from_mask(real)
            h = packing.pack(x)  # (B, T, D) -> (N, D): the real tokens only
            for block in self.blocks:
                h = self._run_block(block, h, packing=packing)
            return packing.unpack(self.norm(h))  # (N, D) -> (B, T, D), 0 at padded positions
        # Checked here, before any work; each block gets the (B, T) mask and the pattern apart,
        # so that attention counts positions in real tokens
        make_attention_mask(
            real, attn_mask, batch_size=B, seq_len=T, n_heads=self.config.n_heads, dtype=x.dtype
        )
        if real is not None:
            x = x.masked_fill(~real[..., None], 0.0)  # (B, T) -> (B, T, 1)
        for block in self.blocks:
            x = self._run_block(block, x, real, attn_mask)
        x = self.norm(x)
        if real is not None:
            x = x.masked_fill(~real[..., None], 0.0)  # (B, T) -> (B, T, 1): padded outputs are 0
        return x

    def _run_block(
        self,
        block: nn.Module,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """``block(...)``, under activation checkpointing when it is on and a backward pass will
        follow (training mode, gradients enabled); evaluation is unchanged."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Non-reentrant: takes non-tensor arguments (the packing), works with FSDP2's hooks
            # and torch.compile, and replays the RNG state so dropout repeats its masks
            out = checkpoint(
                block, x, attention_mask, attn_mask, packing, use_reentrant=False,
                preserve_rng_state=True,
            )  # fmt: skip
        else:
            out = block(x, attention_mask, attn_mask, packing)
        return typing.cast(torch.Tensor, out)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_torch(cls, encoder: nn.TransformerEncoder) -> Encoder:
        """Copy a ``torch.nn.TransformerEncoder`` built from one ``TransformerEncoderLayer``.

        Pre-norm layers need the encoder's final ``norm`` and post-norm layers must not have one,
        which is what our ``Encoder`` computes. Pass ``attention_mask=~src_key_padding_mask``.
        """
        if not isinstance(encoder, nn.TransformerEncoder):
            raise TypeError(f"expected nn.TransformerEncoder, got {type(encoder).__name__}")
        blocks = [EncoderBlock.from_torch(layer) for layer in encoder.layers]
        first = encoder.layers[0]
        sa = first.self_attn
        config = EncoderConfig(
            d_model=sa.embed_dim,
            n_heads=sa.num_heads,
            d_ff=first.linear1.out_features,
            n_layers=len(blocks),
            dropout=first.dropout.p,
            attention_dropout=sa.dropout,
            ff_dropout=first.dropout.p,
            activation=torch_activation_name(first.activation),
            norm_first=first.norm_first,
            layer_norm_eps=first.norm1.eps,
            bias=sa.in_proj_bias is not None,
        )
        final = encoder.norm
        if (final is not None) != config.norm_first:
            raise ValueError(
                f"expected a final norm exactly when the layers are pre-norm; got "
                f"norm_first={config.norm_first} and norm={final!r}"
            )
        like_layers = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        if final is not None and (
            not isinstance(final, nn.LayerNorm)
            or (final.normalized_shape, final.eps, final.elementwise_affine, final.bias is None)
            != (like_layers.normalized_shape, like_layers.eps, True, like_layers.bias is None)
        ):
            raise ValueError(
                f"expected the final norm to match the layers' norms, {like_layers!r}, "
                f"got {final!r}"
            )
        model = cls(config).to(device=sa.in_proj_weight.device, dtype=sa.in_proj_weight.dtype)
        for ours, theirs in zip(model.blocks, blocks, strict=True):
            ours.load_state_dict(theirs.state_dict())
        if final is not None:
            model.norm.load_state_dict(final.state_dict())
        return model


def set_gradient_checkpointing(model: nn.Module, on: bool) -> int:
    """Switch gradient checkpointing on or off in every :class:`Encoder` inside ``model`` (a
    head, a wrapper, FSDP-sharded or not); returns how many encoders were switched."""
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {on!r}")
    encoders = [m for m in model.modules() if isinstance(m, Encoder)]
    for encoder in encoders:
        encoder.gradient_checkpointing = on
    return len(encoders)


def _onnx() -> bool:
    """True while ``torch.onnx.export`` runs: ONNX has no packed-attention operator, so the
    exported graph takes the padded path (a key-padding mask, the same outputs)."""
    return torch.onnx.is_in_onnx_export()


def init_weights(module: nn.Module) -> None:
    """BERT / ViT initialisation: Linear weights ~ N(0, 0.02) truncated at 2 std, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Fill with N(0, std^2) truncated to [-2 std, 2 std], by inverting the normal CDF.

    The same distribution as ``nn.init.trunc_normal_``, whose rejection sampling takes seconds
    for a BERT-size model.
    """
    edge = math.erf(2 / math.sqrt(2))  # CDF(2) - CDF(-2), mapped to [-1, 1]
    tensor.uniform_(-edge, edge).erfinv_()  # U(CDF(-2), CDF(2)) -> Phi^-1, up to sqrt(2)
    return tensor.mul_(std * math.sqrt(2)).clamp_(-2 * std, 2 * std)
