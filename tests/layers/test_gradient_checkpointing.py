"""Gradient checkpointing in the Encoder: the same outputs, gradients and RNG stream as without it
(dropout masks replayed), on padded and padding-free batches, in both norm placements; fewer
activations kept for the backward pass; evaluation untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import padding_mask
from tiny import TEXT, needs_compiler
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from encoderkit import Encoder, EncoderConfig
from encoderkit.layers.encoder import set_gradient_checkpointing
from encoderkit.models.heads import MaskedLM, SequenceClassifier

# (inputs, padding_free): a full batch (no mask at all), padded rows packed into (N, D), and the
# padded (B, T) path under a key-padding mask
INPUTS = [("full", True), ("packed", True), ("padded", False)]


def encoder(
    norm_first: bool, dropout: float, padding_free: bool = True, n_layers: int = 3
) -> Encoder:
    config = dataclasses.replace(
        EncoderConfig.tiny(),
        n_layers=n_layers,
        norm_first=norm_first,
        dropout=dropout,
        attention_dropout=dropout,
        ff_dropout=dropout,
        padding_free=padding_free,
    )
    torch.manual_seed(0)
    model = Encoder(config)
    with torch.no_grad():  # every parameter off its init (LayerNorm 1 / 0, zero biases)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.train()


def batch(kind: str, d_model: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(1)
    x = torch.randn(3, 7, d_model)
    return x, None if kind == "full" else padding_mask([7, 5, 2], 7)


def forward_backward(
    model: Encoder, x: torch.Tensor, mask: torch.Tensor | None, on: bool
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(output, gradients of the input and of every parameter, the RNG state afterwards)."""
    model.gradient_checkpointing = on
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(2)
    out = model(x, mask)
    # A weighted sum, so every position's gradient differs
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [x.grad] + [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    return out.detach(), grads, torch.get_rng_state()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize(("inputs", "padding_free"), INPUTS)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_same_outputs_gradients_and_rng(norm_first, inputs, padding_free, dropout):
    model = encoder(norm_first, dropout, padding_free)
    x, mask = batch(inputs, model.config.d_model)
    out, grads, rng = forward_backward(model, x, mask, on=False)
    out_ckpt, grads_ckpt, rng_ckpt = forward_backward(model, x, mask, on=True)
    # Bit-identical: the recompute replays the same kernels on the same inputs and RNG state
    assert torch.equal(out_ckpt, out)
    for g_ckpt, g in zip(grads_ckpt, grads, strict=True):
        assert torch.equal(g_ckpt, g)
    # The recompute draws from a forked generator: the training stream goes on as without it,
    # so checkpointed runs resume bit-identically too
    assert torch.equal(rng_ckpt, rng)
    if dropout:  # dropout really drew masks: another seed gives another output
        torch.manual_seed(3)
        assert not torch.equal(model(x, mask), out)


@pytest.mark.parametrize("norm_first", [False, True])
def test_evaluation_and_no_grad_unchanged(norm_first):
    """Checkpointing only ever applies to a forward a backward pass will follow."""
    model = encoder(norm_first, dropout=0.1)
    x, mask = batch("packed", model.config.d_model)
    x.requires_grad_(True)
    model.eval()
    expected = saved_bytes(model, x, mask, on=False)
    assert saved_bytes(model, x, mask, on=True) == expected > 0  # the same graph, uncheckpointed
    with torch.no_grad():
        model.gradient_checkpointing = False
        plain = model(x, mask)
        model.gradient_checkpointing = True
        assert torch.equal(model(x, mask), plain)
        model.train()
        torch.manual_seed(4)
        train_plain = model(x, mask)
        model.gradient_checkpointing = False
        torch.manual_seed(4)
        assert torch.equal(model(x, mask), train_plain)


def saved_bytes(model: Encoder, x: torch.Tensor, mask: torch.Tensor | None, on: bool) -> int:
    """Bytes of activations a forward keeps for the backward pass (each storage once,
    parameters left out): what autograd saves, plus each block's input, which a checkpointed
    block holds to recompute from."""
    model.gradient_checkpointing = on
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def keep(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        keep(t)
        return t

    hooks = [
        block.register_forward_pre_hook(lambda _, args: keep(args[0]) if on else None)
        for block in model.blocks
    ]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, mask)
    for hook in hooks:
        hook.remove()
    if out.requires_grad:
        out.sum().backward()
    return sum(kept.values())


class PeakMemory(TorchDispatchMode):
    """The most bytes that tensors created under this mode held at once (CPU has no
    ``max_memory_allocated``): every op's outputs are tracked until their storage is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.bytes = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.bytes -= self.live.pop(key)[1]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in self.live:
                storage = t.untyped_storage()
                self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                self.bytes += storage.nbytes()
        self.peak = max(self.peak, self.bytes)
        return out


def peak_bytes(model: Encoder, x: torch.Tensor, mask: torch.Tensor, on: bool) -> int:
    model.gradient_checkpointing = on
    model.zero_grad(set_to_none=True)
    with PeakMemory() as memory:
        model(x, mask).sum().backward()
    return memory.peak


def test_keeps_fewer_activations():
    model = encoder(norm_first=True, dropout=0.1, n_layers=6)
    torch.manual_seed(1)
    x = torch.randn(8, 64, model.config.d_model, requires_grad=True)
    mask = padding_mask([64, 60, 50, 40, 64, 30, 20, 64], 64)  # 392 real tokens of 512
    plain, checkpointed = saved_bytes(model, x, mask, False), saved_bytes(model, x, mask, True)
    # Measured: 4,998,916 -> 407,680 bytes kept (1/12): each block keeps only its input
    assert checkpointed < plain / 5
    plain, checkpointed = peak_bytes(model, x, mask, False), peak_bytes(model, x, mask, True)
    # Measured peak: 5,395,268 -> 1,494,204 bytes (0.28): one block's activations at a time
    assert checkpointed < plain / 2


def test_set_gradient_checkpointing_switches_every_encoder():
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": SequenceClassifier(TEXT, 3), "b": MaskedLM(TEXT)})
    assert set_gradient_checkpointing(model, True) == 2
    assert all(m.gradient_checkpointing for m in model.modules() if isinstance(m, Encoder))
    assert set_gradient_checkpointing(model, False) == 2
    assert not any(m.gradient_checkpointing for m in model.modules() if isinstance(m, Encoder))
    assert set_gradient_checkpointing(nn.Linear(2, 2), True) == 0
    with pytest.raises(TypeError, match="on must be a bool, got 1"):
        set_gradient_checkpointing(model, 1)  # type: ignore[arg-type]


@pytest.mark.slow
@needs_compiler
def test_compiles_in_one_graph_with_checkpointing():
    torch.manual_seed(0)
    model = SequenceClassifier(TEXT, 3).train()
    ids = torch.randint(1, 50, (3, 7))
    mask = padding_mask([7, 5, 2], 7)
    model(ids, mask).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    set_gradient_checkpointing(model, True)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    compiled(ids, mask).sum().backward()
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=0)
