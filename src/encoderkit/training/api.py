"""The Python API for training: ``fit`` a task on files or in-memory data, ``load_run`` a finished
(or stopped) run and use it. The command line's ``train``, ``eval`` and ``predict`` call these.

>>> run = encoderkit.fit("text", data=[("great film", "pos"), ...], out="runs/reviews")
>>> encoderkit.load_run("runs/reviews").predict(["what a film"])
[{'label': 'pos', 'probability': 0.93, 'probabilities': {...}}]

In-memory data is written into the run directory first (``data.jsonl``, ``data.txt`` or
``data.conll``), so the run resumes and evaluates from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from encoderkit.training.config import TrainConfig, job_defaults
from encoderkit.training.objectives import Objective, Tensors
from encoderkit.utils.files import atomic_write_text


def fit(
    task: str = "text",
    data: Any = None,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    **settings: Any,
) -> Run:
    """Train ``task`` (digits, listops, text, tokens, pairs, mlm) and return the run, loaded from
    its best checkpoint. ``settings`` are :class:`TrainConfig` fields (``init``, ``epochs``,
    ``lr``, ...), with the command line's defaults for what is left out (a fine-tuning learning
    rate with ``init``, ``out`` = ``runs/<task>-<time>``); ``progress`` defaults to False here.

    ``data`` is a file or folder path, or the data itself:

    * text: (text, label) pairs, {"text": [...], "label": [...]} or a pandas DataFrame with
      those columns (a float label with ``regression=True``);
    * tokens: (words, tags) pairs, each a list of strings;
    * pairs: (anchor, positive) or (anchor, positive, negative) tuples, or such columns;
    * mlm: a list of texts, one document each.
    """
    from encoderkit.training.loop import train
    from encoderkit.training.runs import check_new_run, resume_config, write_marker

    given = {"task": task, "progress": False, **settings}
    if out is not None:
        given["out"] = str(out)
    if resume:
        if out is None:
            raise ValueError("resume=True needs out=, the run directory to continue")
        train(
            resume_config(Path(out), {k: v for k, v in given.items() if k != "task"}), resume=True
        )
        return load_run(out)
    given |= job_defaults(given)
    run = Path(given["out"])
    if data is not None and not isinstance(data, (str, os.PathLike)):
        check_new_run(run)  # refuse a directory holding a run before writing into it
        run.mkdir(parents=True, exist_ok=True)
        write_marker(run)
        data = write_data(run, task, data)
    if data is not None:
        given["data"] = str(data)
    cfg = TrainConfig(**given)
    train(cfg)
    return load_run(run)


def load_run(path: str | os.PathLike[str], checkpoint: Literal["best", "latest"] = "best") -> Run:
    """A run directory's model (its best or latest checkpoint), labels and tokenizer."""
    from encoderkit.training.rebuild import load_run_model

    cfg, task = load_run_model(Path(path), checkpoint)
    return Run(Path(path), cfg, task.objective, task.model, task.classes)


@dataclasses.dataclass
class Run:
    """A trained run: ``model`` (eval mode, CPU), its ``config`` and ``classes``."""

    path: Path
    config: TrainConfig
    objective: Objective
    model: torch.nn.Module
    classes: list[str]

    @property
    def results(self) -> dict[str, Any] | None:
        """results.json: the test figures of the best checkpoint, steps, time; None while none."""
        path = self.path / "results.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl (train steps, start, valid and test evaluations)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @torch.no_grad()
    def predict(self, items: str | Sequence[str], batch_size: int = 64) -> Any:
        """One record per text (or image path): a label with probabilities, a value, tags and
        entities, an embedding, or the top tokens for each [MASK]. A single string gives one
        record."""
        single = isinstance(items, str)
        batch = [items] if isinstance(items, str) else list(items)
        if not all(isinstance(item, str) for item in batch):
            raise TypeError("predict takes a string or a list of strings")
        self.model.eval()
        records: list[dict[str, Any]] = []
        for start in range(0, len(batch), batch_size):
            records += self.objective.predict(self.model, batch[start : start + batch_size])
        return records[0] if single else records

    @torch.no_grad()
    def evaluate(self, data: str | os.PathLike[str] | None = None) -> dict[str, float]:
        """The objective's figures on the saved test split, or on every row of ``data`` (a file
        in the training format; class names as in training), and the number of ``examples``."""
        from encoderkit.training.runs import read_test_split
        from encoderkit.training.tasks import load_test_split

        tensors: Tensors
        if data is None:
            tensors = read_test_split(self.path) or load_test_split(self.config)
        else:
            tensors = self.objective.load_file(str(data))
        self.model.eval()
        figures = self.objective.evaluate(self.model, tensors, torch.device("cpu"))
        return {**figures, "examples": len(tensors[0])}

    def sentence_encoder(self, compile: bool = False) -> Any:
        """The run's text encoder as a :class:`SentenceEncoder` (mean pooling, or the run's
        ``pooling``), normalised: what ``--task pairs`` trains, usable for any text run.
        ``compile`` as in :class:`SentenceEncoder`."""
        from encoderkit.models.sentence import SentenceEncoder
        from encoderkit.models.text import TextEncoder

        encoder = getattr(self.model, "encoder", None)
        if not isinstance(encoder, TextEncoder):
            raise ValueError(f"{self.path} is a {self.config.task} run: it has no text encoder")
        return SentenceEncoder(
            encoder,
            self.objective.tokenizer,
            self.config.text_max_length,
            compile=compile,
            pooling=self.config.pooling,
        )


def write_data(run: Path, task: str, data: Any) -> Path:
    """In-memory ``data`` as a file of the task's format inside ``run``."""
    rows = _rows(data)
    if not rows:
        raise ValueError("data is empty: expected rows of examples")
    if task == "mlm":
        texts = [_one_line(r if isinstance(r, str) else r[0]) for r in rows]
        path = run / "data.txt"
        atomic_write_text(path, "".join(t + "\n" for t in texts))
        return path
    if task == "tokens":
        blocks = []
        for i, row in enumerate(rows):
            words, tags = row
            if len(words) != len(tags):
                raise ValueError(f"data row {i}: {len(words)} words but {len(tags)} tags")
            blocks.append("".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True)))
        path = run / "data.conll"
        atomic_write_text(path, "\n".join(blocks))
        return path
    columns = {"text": ("text", "label"), "pairs": ("anchor", "positive", "negative")}.get(task)
    if columns is None:
        raise ValueError(f"the {task} task reads its own data; give data=None")
    lines = []
    for i, row in enumerate(rows):
        record = dict(row) if isinstance(row, Mapping) else dict(zip(columns, row, strict=False))
        if len(record) < 2:
            raise ValueError(f"data row {i}: expected at least {columns[:2]}, got {row!r}")
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    path = run / "data.jsonl"
    atomic_write_text(path, "".join(lines))
    return path


def _rows(data: Any) -> list[Any]:
    """Rows from a list, a dict of columns or a pandas DataFrame (without importing pandas)."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        return list(data.to_dict(orient="records"))
    if isinstance(data, Mapping):
        names = list(data)
        columns = [list(data[name]) for name in names]
        if len({len(c) for c in columns}) > 1:
            raise ValueError(f"data columns differ in length: {[len(c) for c in columns]}")
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    if isinstance(data, Iterable):
        return list(data)
    raise TypeError(f"data must be a path, rows, columns or a DataFrame, got {type(data).__name__}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
