"""Training and fine-tuning: small functions around one readable loop.

AdamW with linear warm-up and cosine decay, gradient clipping and accumulation, bf16 autocast on
GPUs, evaluation every N steps with early stopping, and checkpoints (``checkpoint.py``) from which
``--resume`` continues exactly: the same batches and, in one process, bit-identical losses. A
non-finite loss or gradient norm stops the step before the optimizer touches the weights.

Under ``torchrun`` the same code trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs):
each rank takes its shard of every global batch from a ``DistributedSampler``, and rank 0 alone
writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import signal
import time
import typing
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from encoderkit.training.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    read_weights_header,
    save_checkpoint,
    step_of,
)
from encoderkit.training.tasks import (
    TASKS,
    Task,
    build_model,
    build_task,
    load_test_split,
    model_config,
)
from encoderkit.utils.checks import check_choice, check_positive_int, check_probability
from encoderkit.utils.files import atomic_write_text, describe_os_error

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig:
    """Everything a run needs; the command line's flags are these fields."""

    task: Literal["digits", "listops", "text"] = "digits"
    out: str = "runs/digits"  # the run directory: config, metrics, checkpoints, curves
    data: str | None = None  # text task: a .csv or .jsonl with text and label columns
    init: str = "scratch"  # text task: "scratch" or "all-MiniLM-L6-v2"
    seed: int = 0
    # model
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 128
    n_layers: int = 4
    dropout: float = 0.1
    attention_dropout: float = 0.0
    norm_first: bool = True
    pooling: Literal["cls", "mean"] = "mean"
    listops_train_size: int = 5000
    listops_test_size: int = 1000
    listops_max_length: int = 256
    text_max_length: int = 128
    # optimisation
    epochs: int = 80
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 64  # global, over all ranks and accumulation steps
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    clip_grad_norm: float | None = 1.0
    bf16: bool = True  # autocast on CUDA; the CPU always trains in fp32
    on_nonfinite: Literal["abort", "skip"] = "abort"
    # evaluation and checkpoints
    eval_every: int = 200
    patience: int | None = None  # evaluations without improvement before stopping early
    checkpoint_every: int = 500
    keep_last: int = 2
    stop_at_step: int | None = None  # stop early with a checkpoint; the schedule is unchanged
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        # A TOML file or a saved config.json can hold any JSON type: check each against its
        # annotation, so that `progress = "no"` fails here, naming the field, not as a truthy
        # string deep in the loop.
        for name, hint in _field_types().items():
            _check_type(name, getattr(self, name), hint)
        check_choice("task", self.task, TASKS)
        check_choice("pooling", self.pooling, ("cls", "mean"))
        check_choice("on_nonfinite", self.on_nonfinite, ("abort", "skip"))
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_choice("init", self.init, ("scratch", "all-MiniLM-L6-v2"))
        for name in (
            "epochs",
            "batch_size",
            "grad_accum",
            "eval_every",
            "checkpoint_every",
            "keep_last",
            "listops_train_size",
            "listops_test_size",
            "listops_max_length",
            "text_max_length",
        ):
            check_positive_int(name, getattr(self, name))
        for name in ("max_steps", "patience", "stop_at_step"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("dropout", "attention_dropout", "warmup_fraction", "label_smoothing"):
            check_probability(name, getattr(self, name))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite float > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite float >= 0, got {self.weight_decay!r}")
        clip = self.clip_grad_norm
        if clip is not None and not (math.isfinite(clip) and clip > 0):
            raise ValueError(
                f"clip_grad_norm must be a finite float > 0, or None for no clipping, got {clip!r}"
            )
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size must be divisible by grad_accum, got {self.batch_size} and "
                f"{self.grad_accum}"
            )


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


_KINDS: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _check_type(name: str, value: object, hint: Any) -> None:
    """``value`` fits ``hint`` (bool, int, float, str, a Literal, or one of these | None); an int
    is a float, a bool is not an int."""
    if typing.get_origin(hint) is Literal:
        check_choice(name, value, typing.get_args(hint))
        return
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if value is None and len(options) < len(typing.get_args(hint)):
        return
    kinds = _KINDS[options[0]]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        wanted = options[0].__name__ + (" or None" if hint is not options[0] else "")
        raise TypeError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")


def check_config_field(name: str, value: object) -> None:
    """Check one TrainConfig field's type alone (a TOML file's, before flags override others)."""
    hints = _field_types()
    if name not in hints:
        raise ValueError(f"{name} is not a TrainConfig field; valid fields: {', '.join(hints)}")
    _check_type(name, value, hints[name])


# Fields a resumed run may change: they do not alter what is computed up to the stop.
RESUMABLE_CHANGES = {
    "epochs",
    "max_steps",
    "stop_at_step",
    "eval_every",
    "checkpoint_every",
    "keep_last",
    "patience",
    "on_nonfinite",
    "device",
    "progress",
}


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm was not finite; the weights were left untouched."""


class RunError(ValueError):
    """A run directory that cannot be used as asked: not a run of ours, already holding one,
    unreadable metrics, or a write that failed (disk full, no permission)."""


RUN_MARKER = "encoderkit-run.json"  # written first: what makes a directory a run of ours
RUN_FORMAT = 1
STALE = ("metrics.jsonl", "results.json", "curves.png", "checkpoints")  # what a restart clears


@dataclass
class Progress:
    """Where the run is: saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    accuracy: float | None = None  # at the latest evaluation; None before the first
    best_accuracy: float | None = None
    best_step: int = 0
    evals_since_best: int = 0
    skipped_steps: int = 0


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def learning_rate(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up to ``peak`` over the first steps, then cosine decay to 0 at ``total``."""
    warmup = max(1, round(warmup_fraction * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train (or continue) the run in ``cfg.out``; returns the final figures."""
    joined = not dist.is_initialized()
    ranks = setup_distributed(cfg.device)
    try:
        return train_on(ranks, cfg, resume=resume)
    finally:
        if ranks.world > 1 and joined:
            # Leave the group we joined: torchrun workers that exit inside it can abort at
            # interpreter shutdown ("terminate called without an active exception").
            dist.destroy_process_group()


def train_on(ranks: Ranks, cfg: TrainConfig, *, resume: bool) -> dict[str, Any]:
    """:func:`train` on the ranks and device already set up."""
    run = Path(cfg.out)
    resume_from: Path | None = None  # the checkpoint to resume from
    stale = False  # a run of ours that never saved a checkpoint: start it again
    if resume:
        resume_from = resume_point(run)
        stale = resume_from is None
    elif ranks.main:  # rank 0 alone: the others would see the files it is writing
        stale = check_new_run(run)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    task = build_task(cfg)
    model = task.model.to(ranks.device)
    optimizer = make_optimizer(model, cfg, ranks.device)
    progress = Progress()
    if resume_from is not None:
        progress = restore(run, model, optimizer, ranks, resume_from)
    else:
        torch.manual_seed(cfg.seed + ranks.rank)  # dropout masks differ per rank
        if ranks.main:
            start_run(run, cfg, task, stale)
    if ranks.world > 1:
        dist.barrier()
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if ranks.world > 1 else model
    n_train = len(task.train[-1])
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n_train} examples")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    with writing(run, "metrics.jsonl"):
        logger = MetricsLog(run, ranks, total, progress.step, cfg.progress)
    stop = StopRequest()
    started = time.perf_counter()
    try:
        while progress.step < total and not stop.reason:
            order = epoch_order(n_train, cfg, progress.epoch, ranks)
            per_rank = cfg.batch_size // ranks.world
            while progress.batch_in_epoch < steps_per_epoch and progress.step < total:
                start = progress.batch_in_epoch * per_rank
                tick = time.perf_counter()
                record = train_step(
                    net,
                    model,
                    optimizer,
                    task,
                    order[start : start + per_rank],
                    cfg,
                    ranks,
                    progress,
                    total,
                )
                progress.batch_in_epoch += 1
                progress.step += 1
                if record is not None:
                    record["tokens_per_s"] = record.pop("tokens") / (time.perf_counter() - tick)
                    logger.write(
                        {"step": progress.step, "epoch": progress.epoch, "split": "train", **record}
                    )
                stop.reason = stop.reason or stop.poll(ranks)
                at_end = progress.step == total
                if progress.step % cfg.eval_every == 0 or at_end:
                    improved = evaluate_and_track(model, task, cfg, ranks, progress, logger)
                    if cfg.patience and progress.evals_since_best >= cfg.patience:
                        stop.reason = f"no improvement in {cfg.patience} evaluations"
                    if improved:
                        checkpoint(run, model, optimizer, progress, cfg, ranks)
                if progress.step == cfg.stop_at_step:
                    stop.reason = f"stop_at_step={cfg.stop_at_step}"
                if progress.step % cfg.checkpoint_every == 0 or at_end or stop.reason:
                    checkpoint(run, model, optimizer, progress, cfg, ranks)
                if stop.reason:
                    break
            if progress.batch_in_epoch == steps_per_epoch:
                progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
    finally:
        stop.restore()
        logger.close()
    seconds = time.perf_counter() - started
    results = {
        "task": cfg.task,
        "steps": progress.step,
        "total_steps": total,
        "seconds": round(seconds, 1),
        "test_accuracy": progress.accuracy,  # None: never evaluated
        "best_accuracy": progress.best_accuracy,
        "best_step": progress.best_step if progress.best_accuracy is not None else None,
        "skipped_steps": progress.skipped_steps,
        "stopped": stop.reason or None,
    }
    if ranks.main:
        with writing(run, "results.json"):
            atomic_write_text(run / "results.json", json.dumps(results, indent=2) + "\n")
        if not stop.reason or progress.step == total:
            from encoderkit.views.plots import plot_run

            with writing(run, "curves.png"):
                plot_run(run)
    return results


def train_step(
    net: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    indices: torch.Tensor,
    cfg: TrainConfig,
    ranks: Ranks,
    progress: Progress,
    total: int,
) -> dict[str, Any] | None:
    """One optimizer step over this rank's share of a global batch; None if it was skipped."""
    net.train()
    optimizer.zero_grad(set_to_none=True)
    micro = len(indices) // cfg.grad_accum
    sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
    tokens = 0
    for m in range(cfg.grad_accum):
        inputs, labels = batch(task.train, indices[m * micro : (m + 1) * micro], ranks.device)
        last = m == cfg.grad_accum - 1
        sync = contextlib.nullcontext() if last or ranks.world == 1 else net.no_sync()  # type: ignore[operator]
        with sync, autocast(cfg, ranks):
            logits = net(*inputs)
            loss = compute_loss(logits, labels, cfg)
            (loss / cfg.grad_accum).backward()
        n = len(labels)
        sums += torch.tensor([loss.item() * n, (logits.argmax(-1) == labels).sum().item(), n])
        tokens += task.tokens(inputs)
    if ranks.world > 1:
        dist.all_reduce(sums)
    max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm is not None else math.inf
    grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    loss_value = float(sums[0] / sums[2])
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        message = (
            f"step {progress.step + 1}: loss {loss_value} / gradient norm {grad_norm} "
            f"is not finite; the optimizer step was not taken"
        )
        if cfg.on_nonfinite == "abort":
            raise NonFiniteError(message + "; stopping (the last checkpoint is intact)")
        log.warning("%s; skipping this batch", message)
        progress.skipped_steps += 1
        return None
    lr = learning_rate(progress.step, total, cfg.lr, cfg.warmup_fraction)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return {
        "loss": loss_value,
        "accuracy": float(sums[1] / sums[2]),
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": tokens * ranks.world,
    }


def batch(
    tensors: tuple[torch.Tensor, ...], indices: torch.Tensor, device: torch.device
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The rows ``indices`` of every tensor: (inputs, labels). Token batches (ids, mask) lose the
    columns that are padding in every row, so short sequences cost what they are, not what the
    longest example in the data set is."""
    rows = [t[indices] for t in tensors]
    if len(rows) == 3 and rows[1].dtype == torch.bool:
        longest = max(1, int(rows[1].sum(dim=1).max()))
        rows[:2] = [t[:, :longest] for t in rows[:2]]  # (B, T) -> (B, longest)
    rows = [t.to(device, non_blocking=True) for t in rows]
    return rows[:-1], rows[-1]


def autocast(cfg: TrainConfig, ranks: Ranks) -> contextlib.AbstractContextManager[Any]:
    if ranks.device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tensors: tuple[torch.Tensor, ...],
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[float, float]:
    """(mean loss, accuracy) over ``tensors`` in eval mode."""
    model.eval()
    n = len(tensors[-1])
    loss_sum, correct = 0.0, 0
    for start in range(0, n, 256):
        inputs, labels = batch(tensors, torch.arange(start, min(n, start + 256)), device)
        with autocast(cfg, Ranks(device=device)):
            logits = model(*inputs).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == labels).sum())
    return loss_sum / n, correct / n


def evaluate_and_track(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    ranks: Ranks,
    progress: Progress,
    logger: MetricsLog,
) -> bool:
    """Evaluate on the test split, log it, and track the best; True if this is a new best."""
    loss, accuracy = evaluate(model, task.test, cfg, ranks.device)
    progress.accuracy = accuracy
    logger.write(
        {
            "step": progress.step,
            "epoch": progress.epoch,
            "split": "eval",
            "loss": loss,
            "accuracy": accuracy,
        }
    )
    if progress.best_accuracy is None or accuracy > progress.best_accuracy:
        progress.best_accuracy, progress.best_step, progress.evals_since_best = (
            accuracy,
            progress.step,
            0,
        )
        return True
    progress.evals_since_best += 1
    return False


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


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Fused AdamW (one kernel for all parameters: about 6x faster than the per-tensor loop on
    CPU); no weight decay on biases, norms and embedding-like vectors (1-D parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type in ("cpu", "cuda"))


def checkpoint(
    run: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    cfg: TrainConfig,
    ranks: Ranks,
) -> None:
    if ranks.main:
        state = {
            "optimizer": optimizer.state_dict(),
            "progress": asdict(progress),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "world": ranks.world,
        }
        save_checkpoint(
            run,
            progress.step,
            model.state_dict(),
            state,
            {"progress": asdict(progress)},
            keep={progress.best_step},
            keep_last=cfg.keep_last,
        )
    if ranks.world > 1:
        dist.barrier()


def restore(
    run: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ranks: Ranks,
    path: Path | None = None,
) -> Progress:
    """Load checkpoint ``path`` (default: the newest intact one of ``run``) into the model and
    optimizer; return the position."""
    path = latest_checkpoint(run) if path is None else path
    weights, state, _ = load_checkpoint(path)
    model.load_state_dict(weights)
    optimizer.load_state_dict(state["optimizer"])
    saved = dict(state["progress"])
    for name in ("accuracy", "best_accuracy"):  # runs saved before None meant "not measured"
        if saved.get(name) is not None and saved[name] < 0:
            saved[name] = None
    progress = Progress(**saved)
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    if ranks.rank > 0 or state["world"] != ranks.world:
        torch.manual_seed(hash((progress.step, ranks.rank)) % 2**31)
    if ranks.main:
        trim_metrics(run, progress.step)
        if not (run / RUN_MARKER).is_file():  # a run from before the marker existed
            with writing(run, RUN_MARKER):
                write_marker(run)
    log.info("resuming %s from step %d (%s)", run, progress.step, path.name)
    return progress


def resume_point(run: Path) -> Path | None:
    """The checkpoint ``--resume`` continues from; None for a run of ours killed or stopped
    before its first checkpoint, which then starts from step 0 (and says so)."""
    if not run.is_dir():
        raise CheckpointError(f"can't find a run directory at {run}")
    if not is_run_dir(run):
        raise RunError(
            f"cannot resume {run}: it is not an encoderkit run directory (no {RUN_MARKER}, no "
            f"run config.json)"
        )
    try:
        return latest_checkpoint(run)
    except CheckpointError:
        log.warning(
            "%s holds no valid checkpoint (stopped before its first one): starting from step 0 "
            "with its saved configuration",
            run,
        )
        return None


def has_valid_checkpoint(run: Path) -> bool:
    try:
        latest_checkpoint(run)
    except CheckpointError:
        return False
    return True


def read_marker(run: Path) -> dict[str, Any] | None:
    """The run marker's content; None when there is none."""
    path = run / RUN_MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: not a valid run marker ({e})") from e
    if not isinstance(marker, dict) or not isinstance(marker.get("format"), int):
        raise RunError(f"{path}: not a valid run marker: expected a format number, got {marker!r}")
    if marker["format"] > RUN_FORMAT:
        raise RunError(
            f"{path}: run format {marker['format']} is newer than this encoderkit's "
            f"{RUN_FORMAT}; upgrade encoderkit to use this run"
        )
    return marker


def is_run_dir(run: Path) -> bool:
    """Whether ``run`` is a run directory of ours: it has our marker, or (runs written before
    the marker) a run config.json or a checkpoint."""
    if read_marker(run) is not None:
        return True
    if list_checkpoints(run, verify=False):
        return True
    try:
        read_run_config(run)
    except CheckpointError:
        return False
    return True


def check_new_run(run: Path) -> bool:
    """Refuse an ``--out`` that holds a run with a checkpoint, or that holds anything that is not
    a run of ours; nothing is written. True if ``run`` is a run of ours that never saved a
    checkpoint (killed or stopped before it): it starts again, its stale files cleared."""
    if not run.exists():
        return False
    if not run.is_dir():
        raise RunError(f"--out {run} is not a directory; choose a new or empty directory")
    try:
        found = sorted(p.name for p in run.iterdir())
    except OSError as e:
        raise RunError(f"cannot read {run}: {describe_os_error(e)}") from e
    if all(name.startswith(f".tmp-{RUN_MARKER}-") for name in found):  # killed writing it
        return bool(found)
    if not is_run_dir(run):
        listed = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise RunError(
            f"{run} is not empty and is not an encoderkit run (no {RUN_MARKER}); it holds "
            f"{listed}. Choose a new or empty directory for --out; nothing was changed"
        )
    if has_valid_checkpoint(run):
        raise RunError(
            f"{run} already holds a run; continue it with --resume {run} or choose another --out"
        )
    return True


def start_run(run: Path, cfg: TrainConfig, task: Task, stale: bool) -> None:
    """Mark ``run`` as ours (first of all), clear a previous attempt's files, save the config."""
    with writing(run, RUN_MARKER):
        write_marker(run)
    if stale:
        log.warning("%s holds no valid checkpoint: starting it again from step 0", run)
        with writing(run, "a previous attempt's files"):
            for name in STALE:
                path = run / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    with writing(run, "config.json"):
        write_run_config(run, cfg, task)


def write_marker(run: Path) -> None:
    from encoderkit import __version__

    payload = {"format": RUN_FORMAT, "encoderkit": __version__}
    atomic_write_text(run / RUN_MARKER, json.dumps(payload, indent=2) + "\n")


@contextlib.contextmanager
def writing(run: Path, what: str) -> Iterator[None]:
    """Turn a failed write (disk full, no permission) into one clear RunError that names the
    place, the reason, and the checkpoint to resume from."""
    try:
        yield
    except OSError as e:
        try:
            last = f"; the last intact checkpoint is {latest_checkpoint(run)}"
        except CheckpointError:
            last = ""
        raise RunError(f"cannot write {what} to {run}: {describe_os_error(e)}{last}") from e


def write_run_config(run: Path, cfg: TrainConfig, task: Task) -> None:
    from encoderkit import __version__

    payload = {"config": asdict(cfg), "classes": task.classes, "encoderkit": __version__}
    atomic_write_text(run / "config.json", json.dumps(payload, indent=2) + "\n")


def read_run_config(run: Path) -> TrainConfig:
    return _read_run_file(run)[0]


def _read_run_file(run: Path) -> tuple[TrainConfig, list[str]]:
    """(config, class names) saved in ``run/config.json``."""
    path = Path(run) / "config.json"
    if not path.is_file():
        hint = (
            f"; it stopped before saving one: start it again with encoderkit train --out {run}"
            if (Path(run) / RUN_MARKER).is_file()
            else ""
        )
        raise CheckpointError(f"can't find a valid run at {run}: no config.json{hint}")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        classes = saved["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise TypeError(f"classes must be a list of names, got {classes!r}")
        return TrainConfig(**saved["config"]), classes
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a run configuration ({e})") from e
    except ValueError as e:  # a value TrainConfig refuses
        raise CheckpointError(f"{path}: not a valid run configuration ({e})") from e


def resume_config(run: Path, changes: dict[str, Any]) -> TrainConfig:
    """The saved config of ``run`` with ``changes``; changing what the run computes is an error."""
    saved = read_run_config(run)
    bad = {
        k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES and getattr(saved, k) != v
    }
    bad.pop("out", None)
    if bad:
        diffs = ", ".join(f"{k}: saved {getattr(saved, k)!r}, given {v!r}" for k, v in bad.items())
        raise ValueError(f"cannot resume {run} with a different configuration ({diffs})")
    return dataclasses.replace(
        saved, **{k: v for k, v in changes.items() if k != "out"}, out=str(run)
    )


def trim_metrics(run: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from, so none is repeated. A last
    line cut short by a kill is dropped with a warning; a malformed line elsewhere is an error."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    numbered = [(number, raw) for number, raw in enumerate(lines, 1) if raw.strip()]
    kept = []
    for number, raw in numbered:
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError(f"expected an object with an int step, got {record!r}")
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            if number == numbered[-1][0]:
                log.warning(
                    "%s: dropping line %d, cut short when the run stopped: %r",
                    path,
                    number,
                    raw[:80],
                )
                continue
            raise RunError(
                f"{path}: line {number} is not a metrics record ({e}); repair or delete that "
                f"line, then resume"
            ) from e
        if record["step"] <= step:
            kept.append(raw.decode())
    with writing(run, "metrics.jsonl"):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricsLog:
    """Appends metric records to ``metrics.jsonl`` and shows a progress bar (rank 0 only)."""

    def __init__(self, run: Path, ranks: Ranks, total: int, initial: int, show: bool) -> None:
        self.main, self.run = ranks.main, run
        self.file = open(run / "metrics.jsonl", "a", encoding="utf-8") if self.main else None
        self.bar = None
        if self.main and show:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0
            )
        self.last_eval = ""

    def write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        with writing(self.run, "metrics.jsonl"):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if record["split"] == "eval":
            self.last_eval = f"{record['accuracy']:.3f}"
            log.info(
                "step %d: eval loss %.4f accuracy %.4f",
                record["step"],
                record["loss"],
                record["accuracy"],
            )
        if self.bar is not None and record["split"] == "train":
            self.bar.update(record["step"] - self.bar.n)
            self.bar.set_postfix(
                loss=f"{record['loss']:.3f}",
                acc=f"{record['accuracy']:.2f}",
                tok_s=f"{record['tokens_per_s']:.0f}",
                eval_acc=self.last_eval,
                refresh=False,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (``kill``, a cluster's scheduler, torchrun shutting down) asks
    the loop to stop at the next step boundary, with a checkpoint."""

    SIGNALS: typing.ClassVar[dict[int, str]] = {
        signal.SIGINT: "interrupted",
        signal.SIGTERM: "terminated",
    }

    def __init__(self) -> None:
        self.reason = ""
        self.received = 0  # the signal number, 0 for none
        self.previous: dict[int, Any] = {}
        with contextlib.suppress(ValueError):  # not the main thread: no signal handling
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)

    @property
    def interrupted(self) -> bool:
        return self.received != 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum

    def poll(self, ranks: Ranks) -> str:
        flag = torch.tensor([float(self.received)])
        if ranks.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return self.SIGNALS.get(int(flag.item()), "")

    def restore(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)


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


def load_run_model(
    run: Path, which: Literal["best", "latest"] = "best", *, test_split: bool = False
) -> tuple[TrainConfig, Task]:
    """The run's config and task, with the model weights of its best (or latest) checkpoint.

    The model is rebuilt from the run's config.json and saved classes alone: no training data is
    generated or read, no pretrained weights are loaded (the checkpoint replaces them). The
    task's ``train`` is empty, and so is ``test`` unless ``test_split``. Before anything is
    allocated, the config is checked against the shapes in the checkpoint's header, so an
    edited or foreign config.json fails fast with a CheckpointError.
    """
    run = Path(run)
    cfg, classes = _read_run_file(run)
    path = pick_checkpoint(run, which)
    shapes = read_weights_header(path / "model.safetensors")
    config = model_config(cfg)
    _check_layer_count(config.n_layers, shapes, path)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        try:
            with torch.device("meta"):  # shapes only: nothing is allocated yet
                skeleton = build_model(cfg, len(classes), config)
        except RuntimeError as e:  # sizes whose product overflows, say
            raise CheckpointError(f"{run}/config.json asks sizes no tensor can have ({e})") from e
        _check_shapes(skeleton, shapes, path)
        model = build_model(cfg, len(classes), config)
    weights, _, _ = load_checkpoint(path)
    model.load_state_dict(weights)
    model.eval()
    test = load_test_split(cfg) if test_split else ()
    return cfg, Task(cfg.task, (), test, model, classes)


def pick_checkpoint(run: Path, which: Literal["best", "latest"]) -> Path:
    """The newest intact checkpoint, or the best one it records; a best checkpoint that is gone
    is an error, never silently the latest."""
    check_choice("which", which, ("best", "latest"))
    latest = latest_checkpoint(run)
    if which == "latest":
        return latest
    progress = read_meta(latest).get("progress", {})
    if progress.get("best_accuracy") is None or progress["best_accuracy"] < 0:
        log.warning("%s was never evaluated: using its latest checkpoint, %s", run, latest.name)
        return latest
    best = progress["best_step"]
    if best == step_of(latest):
        return latest
    path = checkpoint_dir(run) / f"step-{best:08d}"
    if not path.is_dir():
        raise CheckpointError(
            f"the best checkpoint of {run}, step {best}, is missing from {checkpoint_dir(run)}; "
            f"use --checkpoint latest for {latest.name}"
        )
    return path


def _check_layer_count(n_layers: int, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Before a model is built, even on the meta device (a million layers take minutes)."""
    held = {key.split(".")[3] for key in shapes if key.startswith("encoder.encoder.blocks.")}
    if n_layers != len(held):
        raise CheckpointError(
            f"config.json asks n_layers={n_layers}, but {path}/model.safetensors holds "
            f"{len(held)} layers"
        )


def _check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    where = f"{path}/model.safetensors"
    missing, extra = sorted(expected.keys() - shapes), sorted(shapes.keys() - expected)
    if missing or extra:
        raise CheckpointError(
            f"config.json does not match {where}: the config's model has "
            f"{', '.join(missing) or 'no key'} not in the checkpoint, the checkpoint has "
            f"{', '.join(extra) or 'no key'} not in the model"
        )
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise CheckpointError(
                f"config.json does not match {where}: {key} should be {shape} by the config, "
                f"found {shapes[key]}"
            )
