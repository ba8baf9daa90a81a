"""Several processes under ``torchrun``: which rank this is, its device, and its share of each
global batch, the same examples for any number of ranks."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from encoderkit.training.config import TrainConfig


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Ranks:
    """Join the torchrun process group when there is one; pick the device."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(device=torch.device("cuda" if use_cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    return Ranks(rank, world, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def epoch_order(n: int, cfg: TrainConfig, epoch: int, ranks: Ranks) -> torch.Tensor:
    """This rank's example order for ``epoch``: the same global permutation for any world size,
    so a run resumed on another number of ranks (same global batch) sees the same batches."""
    sampler: DistributedSampler[int] = DistributedSampler(
        range(n),  # type: ignore[arg-type]  # any sized sequence will do
        num_replicas=ranks.world,
        rank=ranks.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    # The sampler deals the permutation round-robin, so the b-th batches of all ranks together
    # are the b-th block of batch_size examples of the permutation, whatever the world size.
    return torch.tensor(list(sampler))
