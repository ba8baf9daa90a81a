"""The work every contender is timed on, written once: an inference, a training step (forward,
the loss on the real tokens, backward, optimizer step), each once as checked and as a timed call;
and compare.py's fp32 gate, which runs a group's checked calls and stops on a mismatch.

With ``autocast`` (a dtype) the forward runs under ``torch.autocast`` and the loss in fp32; without
it, in the models' own dtype and outside any autocast context.

Shape legend: B batch, T tokens, N real tokens, D model width, H heads, K head width.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from benchmarks.gates import MismatchError, diffs_to_ours, gate, max_abs, rel_max
from benchmarks.measure import timed
from benchmarks.peers import Contender, Forward, Group
from benchmarks.workloads import Batch


def loss_on_real(hidden: torch.Tensor, real: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training step's loss: mean squared error to a fixed target on the real tokens.

    (Not the mean square of the states alone: after the last LayerNorm that is 1 for any input,
    and its gradient is rounding noise.)
    """
    return (hidden[real] - target).square().mean()  # (B, T, D)[(B, T)] -> (N_real, D)


def make_target(batch: Batch, d_model: int, seed: int = 2) -> torch.Tensor:
    """A fixed regression target for the real tokens: (N_real, D)."""
    return torch.randn(batch.tokens, d_model, generator=torch.Generator().manual_seed(seed))


def adamw(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Every contender's optimizer: fused AdamW, the default of Hugging Face's Trainer."""
    return torch.optim.AdamW(model.parameters(), lr=lr, fused=True)


def _autocast(
    inputs: torch.Tensor, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(inputs.device.type, dtype=dtype)


def infer_once(
    c: Contender, inputs: torch.Tensor, mask: torch.Tensor | None, real: torch.Tensor
) -> torch.Tensor:
    """The output on the real tokens, (N, D), in eval mode under ``inference_mode``: the call
    ``inference_call`` times."""
    c.model.eval()
    with torch.inference_mode():
        return c.forward(inputs, mask)[real]  # (B, T, D)[(B, T)] -> (N, D)


def train_once(
    c: Contender,
    inputs: torch.Tensor,
    mask: torch.Tensor | None,
    real: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    autocast: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training step's function with dropout off (eval mode, gradients on): the output on the
    real tokens, (N, D), and the probe weight's gradient.

    Given ``optimizer``, it then steps on the checked gradient, so the check is also the warm-up
    of the whole training step, optimizer state included.
    """
    c.model.eval()
    c.model.zero_grad(set_to_none=True)
    with _autocast(inputs, autocast):
        out = c.forward(inputs, mask)
    loss_on_real(out.float(), real, target).backward()
    if c.probe.grad is None:
        raise MismatchError(f"{c.name}: the training loss gave no gradient to the probe weight")
    grad = c.probe.grad.detach().clone()
    if optimizer is not None:
        optimizer.step()
    c.model.zero_grad(set_to_none=True)
    return out.detach()[real], grad


def inference_call(
    forward: Forward, inputs: torch.Tensor, mask: torch.Tensor | None
) -> Callable[[], None]:
    """A forward under ``inference_mode`` (set eval mode first): the call ``infer_once`` checked."""

    def run() -> None:
        with torch.inference_mode():
            forward(inputs, mask)

    return run


def training_call(
    forward: Forward,
    inputs: torch.Tensor,
    mask: torch.Tensor | None,
    real: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    autocast: torch.dtype | None = None,
) -> Callable[[], None]:
    """Forward, loss on the real tokens, backward, optimizer step (set train mode first)."""

    def step() -> None:
        with _autocast(inputs, autocast):
            out = forward(inputs, mask)
        loss_on_real(out.float(), real, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def attention_call(
    fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], backward: bool
) -> Callable[[], None]:
    """An attention kernel on ``inputs`` (q, k, v): the forward without autograd, or forward and
    backward (the inputs must then be leaves that require grad; their gradients are dropped)."""
    if not backward:

        def forward() -> None:
            with torch.no_grad():  # nested tensors refuse inference_mode
                fn(*inputs)

        return forward
    grad_out = torch.ones_like(inputs[0])  # the output has the queries' shape

    def forward_backward() -> None:
        fn(*inputs).backward(grad_out)
        for t in inputs:
            t.grad = None

    return forward_backward


# The fp32 correctness gate over a group (compare.py)


def check_inference(
    group: Group, batch: Batch, inputs: torch.Tensor, seconds: dict[str, float] | None = None
) -> dict[str, float]:
    """Max abs diff of each peer's output from encoderkit's on real tokens, run exactly as timed;
    MismatchError where one is not within TOLERANCE. ``seconds`` gets each contender's time."""
    mask, real = batch.mask, batch.real
    outs = {}
    for c in group.contenders:
        outs[c.name], took = timed(functools.partial(infer_once, c, inputs, mask, real))
        if seconds is not None:
            seconds[c.name] = took
    diffs = diffs_to_ours(outs, max_abs)
    gate(diffs, f"{group.level}, {batch.kind} batch, inference output")
    return diffs


def check_training(
    group: Group,
    batch: Batch,
    inputs: torch.Tensor,
    target: torch.Tensor,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    seconds: dict[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """The training step's function with dropout off (eval mode, gradients on): each peer's
    output diff on real tokens, and its probe weight's gradient diff relative to the largest
    entry of encoderkit's; MismatchError where one is not within TOLERANCE.

    Given ``optimizers``, each contender then steps on the checked gradients, so the check is
    also the warm-up of the whole training step, optimizer state included. ``seconds`` gets each
    contender's time.
    """
    outs, grads = {}, {}
    for c in group.contenders:
        optimizer = None if optimizers is None else optimizers[c.name]
        (outs[c.name], grads[c.name]), took = timed(
            functools.partial(train_once, c, inputs, batch.mask, batch.real, target, optimizer)
        )
        if seconds is not None:
            seconds[c.name] = took
    out_diffs, grad_diffs = diffs_to_ours(outs, max_abs), diffs_to_ours(grads, rel_max)
    gate(out_diffs, f"{group.level}, {batch.kind} batch, training output")
    gate(grad_diffs, f"{group.level}, {batch.kind} batch, training gradient (relative)")
    return out_diffs, grad_diffs
