"""A training run's configuration: ``TrainConfig``, whose fields are the ``encoderkit train`` flags,
checked field by field against their types, so a TOML file or a saved config.json with a value of
the wrong type fails naming the field."""

from __future__ import annotations

import functools
import math
import time
import typing
from dataclasses import dataclass
from typing import Any, Literal

from encoderkit.utils.checks import check_choice, check_positive_int, check_probability

TASKS = ("digits", "listops", "text", "tokens", "pairs", "mlm")  # see training.objectives


@dataclass(kw_only=True)
class TrainConfig:
    """Everything a run needs; the command line's flags are these fields."""

    task: Literal["digits", "listops", "text", "tokens", "pairs", "mlm"] = "digits"
    out: str = "runs/digits"  # the run directory (the CLI's default: runs/<task>-<time>)
    # text, tokens, pairs: a file (.csv / .jsonl, CoNLL for tokens); mlm: a text file or folder
    data: str | None = None
    text_column: str = "text"  # text task: the columns of --data holding texts and labels
    label_column: str = "label"
    # text tasks: "scratch", "all-MiniLM-L6-v2", a pretrained directory or a run directory
    init: str = "scratch"
    tokenizer: str | None = None  # a tokenizer.json or a directory; default: init's, else MiniLM's
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
    regression: bool = False  # text task: a float label, MSE loss, Spearman correlation
    mask_rate: float = (
        0.15  # mlm: the share of tokens to predict (80% [MASK], 10% random, 10% kept)
    )
    whole_word_mask: bool = False  # mlm: mask every piece of a chosen word together
    pack: bool = True  # mlm: pack short lines into full rows (no attention across lines)
    similarity_scale: float = 20.0  # pairs: cosine similarities x this are the logits
    # optimisation
    epochs: int = 80
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 64  # global, over all ranks and accumulation steps
    grad_accum: int = 1
    lr: float = 2e-3  # from scratch; the CLI's default with --init is FINE_TUNING_LR
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    clip_grad_norm: float | None = 1.0
    bf16: bool = True  # autocast on CUDA; the CPU always trains in fp32
    compile: bool = False  # torch.compile the model's forward for training and evaluation
    gradient_checkpointing: bool = False  # recompute each block's activations in backward
    fsdp: bool = False  # under torchrun: shard parameters and optimizer state (FSDP2) over ranks
    tensorboard: bool = False  # also log to RUN/tensorboard
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
        if not self.init:
            raise ValueError("init must be 'scratch', 'all-MiniLM-L6-v2' or a path, got ''")
        for name, default in (("text_column", "text"), ("label_column", "label")):
            column = getattr(self, name)
            if not column:
                raise ValueError(f"{name} must name a column of the data file, got ''")
            if column != default and self.task != "text":  # not silently ignored
                raise ValueError(
                    f"{name} applies to the text task only, not to {self.task}; got {column!r}"
                )
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
        if not 0 < self.mask_rate < 1:
            raise ValueError(f"mask_rate must be between 0 and 1 (exclusive), got {self.mask_rate}")
        if not (math.isfinite(self.similarity_scale) and self.similarity_scale > 0):
            raise ValueError(
                f"similarity_scale must be a finite float > 0, got {self.similarity_scale!r}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite float > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite float >= 0, got {self.weight_decay!r}")
        clip = self.clip_grad_norm
        if clip is not None and not (math.isfinite(clip) and clip > 0):
            raise ValueError(
                f"clip_grad_norm must be a finite float > 0, or None for no clipping, got {clip!r}"
            )
        if self.fsdp and self.compile:
            raise ValueError(
                "fsdp and compile together are not supported: dynamo cannot trace FSDP2's hooks "
                "in one graph (fullgraph); train sharded without --compile"
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


SCRATCH_LR = 2e-3
# Pretrained weights move little: at the from-scratch rate MiniLM forgets what it knows and lands
# at chance; 2e-5..5e-5 is the usual range for BERT-sized encoders (Devlin et al., 2019).
FINE_TUNING_LR = 3e-5


def job_defaults(given: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The defaults that depend on the job, for the fields ``given`` leaves out (a flag or a
    TOML key counts as given, whatever its value): a fine-tuning learning rate with pretrained
    weights (``init`` other than scratch), no label smoothing for word tags, and a fresh run
    directory per task and start time,
    ``runs/<task>-<YYYYmmdd-HHMMSS>``. Returned as fields to add, so that the run's saved config
    records the values chosen and a resume reads them back, never choosing again."""
    added: dict[str, Any] = {}
    if "lr" not in given and given.get("init", "scratch") != "scratch":
        added["lr"] = FINE_TUNING_LR
    if "label_smoothing" not in given and given.get("task") == "tokens":
        added["label_smoothing"] = 0.0  # smoothed tags slow a tagger down (F1 0.97 vs 0.99)
    if "out" not in given:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        added["out"] = f"runs/{given.get('task', 'digits')}-{stamp}"
    return added


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
    "compile",  # the same maths, only rounded differently (about 1e-6 relative in fp32)
    "gradient_checkpointing",  # the same maths: activations recomputed, dropout masks replayed
    "tensorboard",
}


# One line of help per field: the ``encoderkit train`` flag's help, which adds "; default: X"
# unless the line says its default itself (those chosen per job, see job_defaults).
FIELD_HELP = {
    "task": "what to train: digits (images), listops, text (your labelled texts), tokens (word "
    "tags), pairs (sentence embeddings) or mlm (masked-language pretraining)",
    "out": "the run directory; default: runs/<task>-<YYYYmmdd-HHMMSS>",
    "data": "text: .csv/.jsonl with --text-column and --label-column; tokens: a CoNLL file; "
    "pairs: .csv/.jsonl with anchor,positive[,negative]; mlm: a text file or folder",
    "text_column": "text task: the column of --data that holds the texts",
    "label_column": "text task: the column of --data that holds the labels (numbers with "
    "--regression)",
    "init": "scratch, all-MiniLM-L6-v2, a pretrained model directory or a run directory",
    "tokenizer": "text tasks: a tokenizer.json or a folder holding one; default: the --init "
    "model's, else all-MiniLM-L6-v2's",
    "seed": "seeds the data split, the initial weights, dropout and the batch order",
    "d_model": "model width, from scratch (pretrained --init weights bring their own sizes)",
    "n_heads": "attention heads per layer, from scratch",
    "d_ff": "feed-forward hidden width, from scratch",
    "n_layers": "encoder blocks, from scratch",
    "dropout": "dropout probability in the encoder",
    "attention_dropout": "dropout probability on the attention weights",
    "norm_first": "pre-norm blocks, as ViT; --no-norm-first: post-norm, as BERT",
    "pooling": "one vector per sequence: cls (the first token) or mean (over real tokens)",
    "listops_train_size": "listops: training examples to generate",
    "listops_test_size": "listops: test examples to generate",
    "listops_max_length": "listops: the longest expression, in tokens",
    "text_max_length": "text tasks: tokens per text; longer texts are cut",
    "regression": "text task: a float label, MSE loss, Spearman's correlation",
    "mask_rate": "mlm: the share of tokens to predict (80% [MASK], 10% random, 10% kept)",
    "whole_word_mask": "mlm: mask every piece of a chosen word together",
    "pack": "mlm: pack short lines into full rows (no attention across lines)",
    "similarity_scale": "pairs: cosine similarities times this are the logits",
    "epochs": "passes over the training data (--max-steps overrides it)",
    "max_steps": "optimizer steps to take, overriding --epochs; none: as --epochs says",
    "batch_size": "examples per optimizer step, over all processes and --grad-accum steps",
    "grad_accum": "micro-batches accumulated into each optimizer step",
    "lr": f"peak learning rate; default: {SCRATCH_LR:g} from scratch, {FINE_TUNING_LR:g} with "
    "--init all-MiniLM-L6-v2",
    "weight_decay": "AdamW's decoupled weight decay",
    "warmup_fraction": "share of the steps that warm the learning rate up, before cosine decay",
    "label_smoothing": "cross-entropy label smoothing; default: 0.1, 0.0 for --task tokens",
    "clip_grad_norm": "clip the gradients' global norm to this; none: no clipping",
    "bf16": "bfloat16 autocast on CUDA (the CPU always trains in fp32)",
    "compile": "torch.compile the model's forward: the first steps are slower while it compiles; "
    "on the CPU it needs a C++ compiler",
    "gradient_checkpointing": "recompute each block's activations in backward: less memory, "
    "more time",
    "fsdp": "under torchrun: shard parameters and optimizer state (FSDP2) over the processes",
    "tensorboard": "also log to RUN/tensorboard",
    "on_nonfinite": "on a NaN or infinite loss: abort the run, or skip the step",
    "eval_every": "steps between evaluations on the validation split",
    "patience": "evaluations without improvement before stopping early; none: never stop early",
    "checkpoint_every": "steps between checkpoints",
    "keep_last": "the newest checkpoints to keep, besides the best one",
    "stop_at_step": "stop at this step with a checkpoint, the schedule unchanged (--resume "
    "continues)",
    "device": "auto (CUDA when there is one), cpu or cuda",
    "progress": "show a progress bar",
}
