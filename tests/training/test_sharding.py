"""FSDP2 sharding on 2 CPU processes (gloo): the same training as one process on the whole batch
(fused AdamW with decay / no-decay groups, gradient clipping, accumulation without gradient
sync, gradient checkpointing), and full-state checkpoints that move between the two both ways."""

from __future__ import annotations

import copy
import datetime
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from reference import padding_mask
from torch import nn

from encoderkit.layers.encoder import set_gradient_checkpointing
from encoderkit.models.config import TextConfig
from encoderkit.models.heads import SequenceClassifier
from encoderkit.training.sharding import full_state, load_full_state, shard

WORLD, STEPS, BATCH, ACCUM, CLIP = 2, 4, 8, 2, 1.0
CONFIG = TextConfig(
    vocab_size=50, d_model=32, n_heads=2, d_ff=64, n_layers=2, max_positions=16,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip
ATOL = 1e-5

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def build() -> tuple[SequenceClassifier, Callable[[nn.Module], torch.optim.AdamW]]:
    torch.manual_seed(0)
    return SequenceClassifier(CONFIG, 3), optimizer


def optimizer(model: nn.Module) -> torch.optim.AdamW:
    """The training loop's: fused AdamW, no weight decay on 1-D parameters."""
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=1e-2, fused=True)


def batches() -> list[Batch]:
    """STEPS + 1 global batches: ids (B, T), padded masks of mixed lengths, labels (B,)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS + 1):
        ids = torch.randint(1, CONFIG.vocab_size, (BATCH, 12), generator=g)
        lengths = torch.randint(2, 13, (BATCH,), generator=g).tolist()
        out.append((ids, padding_mask(lengths, 12), torch.randint(0, 3, (BATCH,), generator=g)))
    return out


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: Batch,
    sync: Callable[[bool], None] | None = None,
) -> float:
    """One step over ``ACCUM`` micro-batches, the loss averaged over them (and, by FSDP's
    averaging reduce-scatter, over the ranks); ``sync(False)`` skips the gradient reduction of
    all micro-batches but the last. Returns the gradient norm before clipping."""
    opt.zero_grad(set_to_none=True)
    ids, mask, labels = data
    micro = len(labels) // ACCUM
    for m in range(ACCUM):
        if sync is not None:
            sync(m == ACCUM - 1)
        rows = slice(m * micro, (m + 1) * micro)
        loss = F.cross_entropy(model(ids[rows], mask[rows]), labels[rows])
        (loss / ACCUM).backward()
    norm = float(nn.utils.clip_grad_norm_(model.parameters(), CLIP))
    opt.step()
    return norm


def share(data: Batch, rank: int) -> Batch:
    """This rank's half of a global batch."""
    per_rank = BATCH // WORLD
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    ids, mask, labels = data
    return ids[rows], mask[rows], labels[rows]


def worker(rank: int, port: int, directory: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short timeout: a rank that fails leaves the other one waiting in a collective
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timeout)
    try:
        torch.set_num_threads(1)
        model, make_optimizer = build()
        shard(model)
        assert set_gradient_checkpointing(model, True) == 1
        opt = make_optimizer(model)
        data = batches()
        sync = model.set_requires_gradient_sync  # type: ignore[operator]
        norms = [train_step(model, opt, share(b, rank), sync) for b in data[:STEPS]]
        trained = full_state(model, opt)
        # The one-process run's state, loaded into the sharded model, then one more step
        reference = torch.load(directory / "reference.pt", weights_only=True)
        load_full_state(model, opt, reference["weights"], reference["optimizer"])
        loaded = full_state(model, opt)
        norm = train_step(model, opt, share(data[STEPS], rank), sync)
        after = full_state(model, opt)
        if rank == 0:
            result = {"norms": norms, "trained": trained, "loaded": loaded, "norm": norm}
            torch.save({**result, "after": after}, directory / "sharded.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def max_difference(a: Any, b: Any) -> float:
    """The largest absolute difference between two nested states (inf if their structure or
    any non-tensor value differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf")
        return max((max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return float("inf")
        return max((max_difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return 0.0 if a == b else float("inf")


def without_key_bias(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` less the attention's key bias (the middle third of ``qkv.bias``). Its gradient
    is 0 in exact arithmetic (softmax ignores what all keys add alike), so AdamW's
    m / sqrt(v) turns each run's rounding noise (moments ~1e-12) into steps of up to lr: any two
    summation orders, sharded or not, move it differently (measured: 2e-5 after 4 steps)."""
    D = CONFIG.d_model
    return {
        k: torch.cat([v[:D], v[2 * D :]]) if k.endswith("attn.qkv.bias") else v
        for k, v in weights.items()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """(one process on whole batches, 2 sharded ranks): the gradient norms of the first
    ``STEPS`` steps and the full states after them ("trained"), and the norm of one more step
    and the states after it ("after"); the sharded run takes that step from the one-process
    run's state ("loaded", see ``worker``)."""
    directory = tmp_path_factory.mktemp("sharding")
    model, make_optimizer = build()
    opt = make_optimizer(model)
    data = batches()
    norms = [train_step(model, opt, b) for b in data[:STEPS]]
    trained = copy.deepcopy((model.state_dict(), opt.state_dict()))
    torch.save({"weights": trained[0], "optimizer": trained[1]}, directory / "reference.pt")
    norm = train_step(model, opt, data[STEPS])
    one = {"norms": norms, "trained": trained, "norm": norm,
           "after": (model.state_dict(), opt.state_dict())}  # fmt: skip
    mp.spawn(worker, args=(free_port(), directory), nprocs=WORLD)
    return one, torch.load(directory / "sharded.pt", weights_only=True)


def test_sharded_training_equals_one_process(runs):
    one, sharded = runs
    # The ranks' gradients are averaged, not summed: the norms agree at every step (AdamW alone
    # would hide a factor of 2), and clipping scaled some steps
    torch.testing.assert_close(
        torch.tensor(sharded["norms"]), torch.tensor(one["norms"]), rtol=1e-5, atol=0
    )
    assert max(one["norms"]) > CLIP
    weights, optim = sharded["trained"]
    # Measured: 1.5e-6 (weights), 7.5e-9 (optimizer state) after 4 steps
    assert max_difference(without_key_bias(weights), without_key_bias(one["trained"][0])) < ATOL
    assert max_difference(optim, one["trained"][1]) < ATOL


def test_sharded_checkpoint_loads_in_one_process(runs):
    _, sharded = runs
    weights, optim = sharded["trained"]
    model, make_optimizer = build()
    opt = make_optimizer(model)
    assert weights.keys() == model.state_dict().keys()
    model.load_state_dict(weights)
    opt.load_state_dict(optim)
    assert max_difference(model.state_dict(), weights) == 0.0
    assert max_difference(opt.state_dict(), optim) == 0.0


def test_one_process_checkpoint_loads_sharded(runs):
    one, sharded = runs
    # Gathered again right after loading: bit-identical
    assert max_difference(sharded["loaded"], one["trained"]) == 0.0
    # And it trains on as the one-process run does: the step counts and moments reached the
    # sharded optimizer
    assert sharded["norm"] == pytest.approx(one["norm"], rel=1e-5)
    (weights, optim), (one_weights, one_optim) = sharded["after"], one["after"]
    assert max_difference(without_key_bias(weights), without_key_bias(one_weights)) < ATOL
    assert max_difference(optim, one_optim) < ATOL


def test_full_state_in_one_process_is_a_copy_of_the_plain_state():
    """Unsharded, without a process group: the plain ``state_dict()``s, copied."""
    model, make_optimizer = build()
    opt = make_optimizer(model)
    data = batches()
    train_step(model, opt, data[0])
    weights, optim = full_state(model, opt)
    expected = copy.deepcopy((model.state_dict(), opt.state_dict()))
    assert max_difference((weights, optim), expected) == 0.0
    train_step(model, opt, data[1])  # moves the weights, moments and step counts in place
    assert max_difference((weights, optim), expected) == 0.0
    assert full_state(model)[1] == {}
    # And back: a fresh model and optimizer take the states as load_state_dict would
    fresh, make_optimizer = build()
    fresh_opt = make_optimizer(fresh)
    load_full_state(fresh, fresh_opt, weights, optim)
    assert max_difference((fresh.state_dict(), fresh_opt.state_dict()), expected) == 0.0


def test_errors():
    model, make_optimizer = build()
    with pytest.raises(ValueError, match="shard\\(\\) needs a process group"):
        shard(model)
    weights, optim = full_state(model, make_optimizer(model))
    other = torch.optim.AdamW(model.parameters(), fused=True)  # one group, not two
    with pytest.raises(ValueError, match=r"with \[31\] parameters per group .*, got \[12, 19\]"):
        load_full_state(model, other, weights, optim)
    with pytest.raises(ValueError, match="expected the optimizer's state"):
        load_full_state(model, other, weights)
