"""Training and fine-tuning: small functions around one readable loop.

What is learnt and measured is the task's objective (``training.objectives``): classes, tags,
sentence pairs or masked tokens; the loop is the same for all. AdamW with linear warm-up and
cosine decay, gradient clipping and accumulation, bf16 autocast on GPUs, evaluation on the
validation split before the first step (where training starts) and every N steps, with early
stopping on the objective's metric (the best checkpoint is the best on validation; the test split
is evaluated once, on that checkpoint, at the end), and checkpoints (``checkpoint.py``) from which
``--resume`` continues exactly: the same batches and, in one process, bit-identical losses. A
non-finite loss or gradient norm stops the step before the optimizer touches the weights.

Under ``torchrun`` the same code trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs),
or with ``--fsdp`` with FSDP2, which also shards parameters, gradients and optimizer state
(``sharding.py``; checkpoints stay in the one-process format): each rank takes its shard of every
global batch from a ``DistributedSampler``, and rank 0 alone writes checkpoints and logs.

``--compile`` runs the model's forward (training and evaluation) under ``torch.compile``; the
loss, the optimizer and the checkpoints stay as they are (see :func:`compiled`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from encoderkit.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    pick_checkpoint,
    save_checkpoint,
    saved_progress,
)
from encoderkit.training.config import TrainConfig
from encoderkit.training.distributed import Ranks, epoch_order, setup_distributed
from encoderkit.training.runs import (
    RUN_MARKER,
    MetricsLog,
    check_new_run,
    resume_point,
    start_run,
    trim_metrics,
    write_marker,
    writing,
)
from encoderkit.training.tasks import Task, build_task
from encoderkit.utils.files import atomic_write_text

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm was not finite; the weights were left untouched."""


@dataclass
class Progress:
    """Where the run is: saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    # the objective's metric on validation (accuracy, entity F1, ...); None before the first
    score: float | None = None  # at the latest evaluation
    best_score: float | None = None
    best_step: int = 0
    evals_since_best: int = 0
    skipped_steps: int = 0


def learning_rate(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up to ``peak`` over the first steps, then cosine decay to 0 at ``total``."""
    warmup = max(1, round(warmup_fraction * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


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
    check_compiler(cfg, ranks.device)
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
    if resume_from is None:  # a resumed run's saved config holds what was fitted at its start
        cfg = fit_to_task(cfg, task, ranks)
    model = task.model.to(ranks.device)
    if cfg.gradient_checkpointing:
        from encoderkit.layers.encoder import set_gradient_checkpointing

        set_gradient_checkpointing(model, True)
    if cfg.fsdp and ranks.world > 1:  # before the optimizer: it holds the sharded parameters
        from encoderkit.training.sharding import shard

        shard(model)
    elif cfg.fsdp:
        log.warning("--fsdp in one process: nothing to shard; start it with torchrun")
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
    # The loop calls `forward` (evaluation) and `net` (training); checkpoints save `model`, the
    # plain module, whatever runs it. DDP wraps the compiled module, not the other way round:
    # dynamo cannot trace DDP's forward in one graph.
    forward = compiled(model, cfg)
    ddp = ranks.world > 1 and not sharded(model)  # FSDP2 averages gradients itself
    net = nn.parallel.DistributedDataParallel(forward) if ddp else forward
    n_train = len(task.train[0])
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n_train} examples")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    with writing(run, "metrics.jsonl"):
        logger = MetricsLog(run, ranks, total, progress.step, cfg.progress, cfg.tensorboard)
    stop = StopRequest()
    early_stop = False
    started = time.perf_counter()
    try:
        if resume_from is None and progress.step == 0:  # where training starts, for comparison
            logger.write({"step": 0, "epoch": 0, "split": "start", **evaluate(forward, task, cfg)})
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
                    improved = evaluate_and_track(forward, task, cfg, ranks, progress, logger)
                    if cfg.patience and progress.evals_since_best >= cfg.patience:
                        stop.reason = f"no improvement in {cfg.patience} evaluations"
                        early_stop = True
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
        # Finished (not interrupted): the best checkpoint on the test split, once. An interrupted
        # run writes no test line, so its resumed metrics equal an uninterrupted run's.
        test = None
        if (progress.step == total or early_stop) and progress.best_score is not None:
            test = test_best(run, model, forward, task, cfg, ranks, progress, logger)
            if ranks.main:
                task.objective.export(model, run)
    finally:
        stop.restore()
        logger.close()
    seconds = time.perf_counter() - started
    results = {
        "task": cfg.task,
        "metric": task.objective.metric,  # what chose the best checkpoint (higher is better)
        "steps": progress.step,
        "total_steps": total,
        "seconds": round(seconds, 1),
        "valid": progress.score,  # the metric at the latest evaluation; None: never evaluated
        "best_valid": progress.best_score,
        "best_step": progress.best_step if progress.best_score is not None else None,
        "test": test,  # every figure of the best checkpoint on test; None: not finished
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


def fit_to_task(cfg: TrainConfig, task: Task, ranks: Ranks) -> TrainConfig:
    """``cfg`` as the run really is, for its saved config: a batch no larger than the training
    data (a multiple of ``grad_accum`` and the number of ranks), and the model's own sizes (a
    pretrained model's, not the flags' defaults)."""
    changes: dict[str, Any] = {}
    n_train, step = len(task.train[0]), cfg.grad_accum * ranks.world
    if cfg.batch_size > n_train and n_train >= step:
        changes["batch_size"] = n_train // step * step
        log.info(
            "batch_size %d is larger than the %d training examples: using %d (a multiple of "
            "grad_accum %d x %d ranks)",
            cfg.batch_size,
            n_train,
            changes["batch_size"],
            cfg.grad_accum,
            ranks.world,
        )
    config = getattr(getattr(task.model, "encoder", None), "config", None)
    for name in ("d_model", "n_heads", "d_ff", "n_layers", "norm_first"):
        if config is not None and getattr(config, name) != getattr(cfg, name):
            changes[name] = getattr(config, name)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def compiled(module: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``module`` itself, or with ``cfg.compile`` the same module under ``torch.compile``.

    The compiled wrapper shares the module's parameters and is only called: the loop saves the
    plain module's ``state_dict`` (no ``_orig_mod.`` prefix), so a compiled run's checkpoints
    load and resume in an eager run, and an eager run's in a compiled one.

    One graph per forward (``fullgraph=True``): that is also what lets padding-free packing's
    data-dependent token count into the graph, which would otherwise break it in two. Shapes are
    dynamic from the first call: every batch is cut to its own longest sequence (and, packed,
    has its own number of real tokens); static shapes would compile again for each new length
    until dynamo's recompile limit, then silently run eager. Training and evaluation (eval mode,
    no gradients) are two graphs, each compiled on its first call.
    """
    if not cfg.compile:
        return module
    log.info(
        "compiling the model's forward with torch.compile: the first training step and the "
        "first evaluation are slower"
    )
    return typing.cast(nn.Module, torch.compile(module, fullgraph=True, dynamic=True))


def check_compiler(cfg: TrainConfig, device: torch.device) -> None:
    """``--compile`` generates C++ on the CPU and Triton on GPUs: say so before any work, not
    at the first step with a compiler's traceback."""
    if not cfg.compile:
        return
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # moved in another torch: the first step reports it instead
            return
        try:
            get_cpp_compiler()
        except (RuntimeError, OSError) as e:  # InvalidCxxCompiler is a RuntimeError
            raise ValueError(
                "--compile on the CPU needs a C++ compiler (g++ or clang++ on the PATH, or CXX "
                f"naming one), found none ({type(e).__name__}); install one or train without "
                "--compile"
            ) from e
    elif device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # moved in another torch: the first step reports it instead
            return
        if not has_triton():
            raise ValueError(
                "--compile on a GPU needs Triton (pip install triton), found none; install it "
                "or train without --compile"
            )


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
    objective = task.objective
    net.train()
    optimizer.zero_grad(set_to_none=True)
    micro = len(indices) // cfg.grad_accum
    sums: dict[str, float] = {}
    tokens = 0
    for m in range(cfg.grad_accum):
        rows = objective.batch(task.train, indices[m * micro : (m + 1) * micro], ranks.device)
        last = m == cfg.grad_accum - 1
        sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if sharded(model):  # reduce-scatter gradients after the last micro-batch only
            model.set_requires_gradient_sync(last)  # type: ignore[operator]
        elif not last and ranks.world > 1:
            sync = net.no_sync()  # type: ignore[operator]
        with sync, autocast(cfg, ranks):
            loss, counts = objective.loss(net, rows, step_generator(cfg, progress.step, ranks, m))
            (loss / cfg.grad_accum).backward()
        for key, value in counts.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        tokens += objective.tokens(rows)
    totals = torch.tensor(list(sums.values()), dtype=torch.float64)
    if ranks.world > 1:
        dist.all_reduce(totals)
    sums = dict(zip(sums, totals.tolist(), strict=True))
    max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm is not None else math.inf
    grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    n = max(sums.pop("n"), 1.0)  # 0 when nothing in the batch was scored (no token masked)
    loss_value = sums.pop("loss") / n
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
        **{key: value / n for key, value in sums.items()},  # accuracy: the share right
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": tokens * ranks.world,
    }


def step_generator(cfg: TrainConfig, step: int, ranks: Ranks, micro: int) -> torch.Generator:
    """The random numbers a loss draws (masking, say) at this step, rank and micro-batch: a
    function of them and the seed alone, so a resumed run draws what an uninterrupted one did,
    whatever the global random state."""
    seed = ((cfg.seed * 1_000_003 + step) * 4_099 + ranks.rank) * 257 + micro
    return torch.Generator().manual_seed(seed % 2**63)


def autocast(cfg: TrainConfig, ranks: Ranks) -> contextlib.AbstractContextManager[Any]:
    if ranks.device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    tensors: tuple[torch.Tensor, ...] | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """The objective's figures over ``tensors`` (default: the validation split) in eval mode."""
    model.eval()
    device = next(model.parameters()).device if device is None else device
    tensors = task.valid if tensors is None else tensors
    with autocast(cfg, Ranks(device=device)):
        return task.objective.evaluate(model, tensors, device)


def evaluate_and_track(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    ranks: Ranks,
    progress: Progress,
    logger: MetricsLog,
) -> bool:
    """Evaluate on the validation split, log it, and track the best; True if this is a new best.
    The test split plays no part in choosing: it is reported once, by :func:`test_best`."""
    figures = evaluate(model, task, cfg, device=ranks.device)
    score = figures[task.objective.metric]
    progress.score = score
    logger.write({"step": progress.step, "epoch": progress.epoch, "split": "valid", **figures})
    if progress.best_score is None or score > progress.best_score:
        progress.best_score, progress.best_step, progress.evals_since_best = (
            score,
            progress.step,
            0,
        )
        return True
    progress.evals_since_best += 1
    return False


def test_best(
    run: Path,
    model: nn.Module,
    forward: nn.Module,
    task: Task,
    cfg: TrainConfig,
    ranks: Ranks,
    progress: Progress,
    logger: MetricsLog,
) -> dict[str, float] | None:
    """The best checkpoint's test figures, logged as a ``test`` line (rank 0; None elsewhere).
    Loads that checkpoint's weights into ``model``: training is over."""
    if sharded(model):  # every rank holds a shard: all load, all evaluate, rank 0 reports
        from encoderkit.training.sharding import load_full_state

        weights, _, _ = load_checkpoint(pick_checkpoint(run, "best"))
        load_full_state(model, None, weights)
    elif not ranks.main:
        return None
    else:
        weights, _, _ = load_checkpoint(pick_checkpoint(run, "best"))
        model.load_state_dict(weights)
    figures = evaluate(forward, task, cfg, task.test, ranks.device)
    if not ranks.main:
        return None
    logger.write(
        {
            "step": progress.step,
            "epoch": progress.epoch,
            "split": "test",
            "checkpoint_step": progress.best_step,
            **figures,
        }
    )
    return figures


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
    if sharded(model):  # gathered from every rank's shards, in the one-process format
        from encoderkit.training.sharding import full_state

        weights, optimizer_state = full_state(model, optimizer)
    elif ranks.main:
        weights, optimizer_state = model.state_dict(), optimizer.state_dict()
    if ranks.main:
        state = {
            "optimizer": optimizer_state,
            "progress": asdict(progress),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "world": ranks.world,
        }
        save_checkpoint(
            run,
            progress.step,
            weights,
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
    if sharded(model):
        from encoderkit.training.sharding import load_full_state

        load_full_state(model, optimizer, weights, state["optimizer"])
    else:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
    progress = Progress(**saved_progress(state["progress"]))
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


def sharded(model: nn.Module) -> bool:
    """Whether ``--fsdp`` sharded the model over several ranks (FSDP2)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


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
