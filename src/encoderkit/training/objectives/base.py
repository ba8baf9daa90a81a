"""What a training task optimises and measures: the ``Objective`` each task's module implements.

The loop (``training.loop``) knows nothing about labels, masks or pairs. It asks the task's
objective for a batch (rows of the task's tensors), a loss with the sums it logs, and the figures
of an evaluation; the objective's ``metric`` (higher is better) chooses the best checkpoint on the
validation split and stops early.

A task's data is a tuple of tensors with the same first dimension N (rows): examples, packed
rows of text, or pairs. The loop deals rows out by index, so resuming, several ranks and
gradient accumulation work the same for every objective. Every tensor is saved with
``safetensors`` (the test split travels in the run directory), so all are plain dense tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from encoderkit.models.config import TextConfig, VisionConfig
    from encoderkit.training.config import TrainConfig

Tensors = tuple[torch.Tensor, ...]
Batch = dict[str, torch.Tensor]
Sums = dict[str, float]


@dataclass
class Splits:
    """A task's data: train / validation / test tensors and what the rows' labels mean (class or
    tag names; empty where there are none)."""

    train: Tensors
    valid: Tensors
    test: Tensors
    classes: list[str] = field(default_factory=list)


class Objective:
    """One task's data, model, loss and figures. Subclasses set ``name`` and ``metric`` and
    implement every method; ``cfg`` is the run's configuration.

    The loop calls ``loss`` inside autocast with the model in train mode, and ``evaluate`` with
    the model in eval mode under ``torch.no_grad()``. ``loss`` returns the micro-batch's mean loss
    (the one backpropagated) and ``Sums``: ``"n"`` (what the mean is over: examples, masked
    tokens, pairs), ``"loss"`` (the loss summed over those n) and any other sums the log shows as
    ``sums[key] / n`` (``"accuracy"``: the number right). Sums add up over micro-batches and
    ranks, so the logged figures are the global batch's.
    """

    name: ClassVar[str]
    metric: str  # a key of evaluate()'s figures; higher is better

    def __init__(self, cfg: TrainConfig, run: Path | None = None) -> None:
        self.cfg = cfg
        self.run = run  # the run directory a trained model was rebuilt from, if any
        self.classes: list[str] = []  # the labels' names, set from the data or the run

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The run's tokenizer (``tokenizers.Tokenizer``), truncating at ``text_max_length``, no
        padding: the copy in the run directory when there is one (see
        :func:`tokenizer_file`)."""
        from tokenizers import Tokenizer

        path = tokenizer_file(self.cfg, self.run)
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length=self.cfg.text_max_length)
        tokenizer.no_padding()
        return tokenizer

    def load(self) -> Splits:
        """Read (or generate) the task's data and split it three ways; draws nothing from torch's
        global random state, so the model's initial weights depend on the seed alone."""
        raise NotImplementedError

    def load_file(self, path: str) -> Tensors:
        """Every row of a file in the task's format as one split (``eval --data``), labels
        numbered as in training (``self.classes``)."""
        raise NotImplementedError(f"the {self.cfg.task} task cannot evaluate a new file")

    def build_model(self, config: TextConfig | VisionConfig, classes: Sequence[str]) -> nn.Module:
        """A freshly initialised model for ``config`` (pretrained weights are copied in after)."""
        raise NotImplementedError

    def batch(self, tensors: Tensors, indices: torch.Tensor, device: torch.device) -> Batch:
        """The rows ``indices`` of ``tensors`` on ``device``, as ``loss`` and ``evaluate`` read
        them; token rows are cut to their longest real sequence."""
        raise NotImplementedError

    def loss(
        self, model: nn.Module, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, Sums]:
        """(mean loss, sums) of one training micro-batch. ``generator`` is the only randomness a
        loss may draw besides dropout (masking, say): seeded by the run's seed, the step, the
        rank and the micro-batch, so a resumed run draws what an uninterrupted one does."""
        raise NotImplementedError

    def evaluate(
        self, model: nn.Module, tensors: Tensors, device: torch.device
    ) -> dict[str, float]:
        """Figures over a whole split: ``"loss"``, ``metric`` and any others; deterministic (a
        masked-LM split is masked the same way at every evaluation)."""
        raise NotImplementedError

    def tokens(self, batch: Batch) -> int:
        """Real tokens (or patches) in a batch, for tokens/s."""
        raise NotImplementedError

    def predict(self, model: nn.Module, items: Sequence[str]) -> list[dict[str, Any]]:
        """One JSON-ready record per input (a text, or an image file's path) from a model in eval
        mode: a label and its probability, a value, tags, an embedding, ..."""
        raise NotImplementedError

    def export(self, model: nn.Module, run: Path) -> None:
        """Write what the finished run gives users besides checkpoints (``model`` holds the best
        checkpoint's weights; rank 0 only). Nothing by default."""


def row_lengths(mask: torch.Tensor) -> int:
    """The longest real sequence in a (B, T) mask (at least 1)."""
    return max(1, int(mask.sum(dim=1).max()))


def cut_columns(tensors: Sequence[torch.Tensor], length: int) -> list[torch.Tensor]:
    """Each (B, T, ...) tensor cut to (B, length, ...), copied: a compiled forward guards on its
    inputs' strides and on whether they are views, so a column slice (row stride T, or a view
    when ``length`` is T) would make some lengths compile again."""
    return [t[:, :length].clone(memory_format=torch.contiguous_format) for t in tensors]


TOKENIZER = "tokenizer.json"  # a text run's tokenizer, copied into its directory


def tokenizer_file(cfg: TrainConfig, run: Path | None = None) -> Path:
    """The tokenizer.json a text run reads: the run directory's own copy; else ``cfg.tokenizer``
    (a tokenizer.json, or a directory holding one); else the ``init`` model's (a pretrained
    directory's or a run's); else all-MiniLM-L6-v2's WordPiece vocabulary."""
    if run is not None and (Path(run) / TOKENIZER).is_file():
        return Path(run) / TOKENIZER
    source = cfg.tokenizer
    if source is None and cfg.init not in ("scratch", "all-MiniLM-L6-v2"):
        source = cfg.init
    if source is None or source == "all-MiniLM-L6-v2":
        from encoderkit.models.sentence import shipped_model_path

        return shipped_model_path() / TOKENIZER
    path = Path(source)
    path = path / TOKENIZER if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"expected a tokenizer.json at {path}, found none")
    return path
