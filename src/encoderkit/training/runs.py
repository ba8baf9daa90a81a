"""Run directories: what makes a directory a run of ours (a marker written first), starting and
restarting runs, their saved configuration, the metrics log, and writes that fail clearly (disk
full, no permission) naming the last intact checkpoint.

A run directory holds ``encoderkit-run.json``, ``config.json``, ``metrics.jsonl``,
``checkpoints/`` (see :mod:`encoderkit.training.checkpoint`), ``results.json`` and ``curves.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from encoderkit.training.checkpoint import (
    RUN_MARKER,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
)
from encoderkit.training.config import RESUMABLE_CHANGES, TrainConfig
from encoderkit.training.distributed import Ranks
from encoderkit.utils.files import atomic_write, atomic_write_text, describe_os_error

if TYPE_CHECKING:
    from encoderkit.training.tasks import Task

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run directory that cannot be used as asked: not a run of ours, already holding one,
    unreadable metrics, or a write that failed (disk full, no permission)."""


RUN_FORMAT = 1
TEST_SPLIT = "test-split.safetensors"  # the test split, tokenized: eval reads no other data
STALE = (
    "metrics.jsonl",
    "results.json",
    "curves.png",
    "checkpoints",
    TEST_SPLIT,
    "tokenizer.json",
    "tensorboard",
)  # what a restart clears


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
    if stale and any((run / name).exists() for name in STALE):
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
    with writing(run, TEST_SPLIT):
        write_test_split(run, task.test)
    if task.name not in ("digits", "listops"):  # labels travel in config.json, the tokenizer here
        from encoderkit.training.objectives.base import TOKENIZER, tokenizer_file

        with writing(run, TOKENIZER):
            source = tokenizer_file(cfg).read_text(encoding="utf-8")
            atomic_write_text(run / TOKENIZER, source)


def write_test_split(run: Path, tensors: tuple[torch.Tensor, ...]) -> None:
    """The test split as the model reads it, so ``eval`` needs nothing but the run directory: the
    training data may move or change."""
    named = {f"{i}": t.contiguous() for i, t in enumerate(tensors)}  # inputs..., labels
    atomic_write(run / TEST_SPLIT, lambda tmp: save_file(named, str(tmp)))


def read_test_split(run: Path) -> tuple[torch.Tensor, ...] | None:
    """The test split saved in ``run``; None for runs written before it was saved."""
    path = run / TEST_SPLIT
    if not path.is_file():
        return None
    try:
        named = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable test split ({e})") from e
    if sorted(named) != [str(i) for i in range(len(named))] or len(named) < 2:
        raise CheckpointError(
            f"{path}: expected tensors 0..n (inputs, then labels), got {sorted(named)}"
        )
    return tuple(named[str(i)] for i in range(len(named)))


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

    payload: dict[str, Any] = {"config": asdict(cfg), "classes": task.classes}
    config = getattr(getattr(task.model, "encoder", None), "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        payload["model"] = asdict(config)  # the encoder as built, pretrained sizes included
    payload["encoderkit"] = __version__
    atomic_write_text(run / "config.json", json.dumps(payload, indent=2) + "\n")


def read_run_config(run: Path) -> TrainConfig:
    return read_run_file(run)[0]


def read_run_file(run: Path) -> tuple[TrainConfig, list[str]]:
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


def read_model_config(run: Path) -> Any:
    """The encoder config saved in ``run/config.json`` (a TextConfig or VisionConfig); None for
    runs saved before it was recorded."""
    from encoderkit.models.config import TextConfig, VisionConfig

    path = Path(run) / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("model")
        if saved is None:
            return None
        kind = VisionConfig if "image_size" in saved else TextConfig
        return kind(**saved)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid model configuration ({e})") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: not a valid model configuration ({e})") from e


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
    line cut short by a kill is dropped with a warning; a malformed line elsewhere is an error.
    A run logged before the validation split existed is warned about here, as its lines are
    read anyway."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    numbered = [(number, raw) for number, raw in enumerate(lines, 1) if raw.strip()]
    kept = []
    old_format = False  # evaluations logged as "eval": a run from before the validation split
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
        old_format = old_format or record.get("split") == "eval"
    if old_format:
        log.warning(
            "%s started before runs held out a validation split: it resumes on 10%% fewer "
            "training examples than it started with, and chooses its best checkpoint on "
            "validation from now on (earlier evaluations were on the test split)",
            run,
        )
    with writing(run, "metrics.jsonl"):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricsLog:
    """Appends metric records to ``metrics.jsonl``, shows a progress bar, and with
    ``tensorboard`` writes the same figures to ``RUN/tensorboard`` (rank 0 only)."""

    def __init__(
        self,
        run: Path,
        ranks: Ranks,
        total: int,
        initial: int,
        show: bool,
        tensorboard: bool = False,
    ) -> None:
        self.main, self.run = ranks.main, run
        self.file = open(run / "metrics.jsonl", "a", encoding="utf-8") if self.main else None
        self.bar = None
        if self.main and show:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0
            )
        self.board = None
        if self.main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is in the train extra
                raise RunError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from e
            # purge_step: a resumed run first drops the events logged after its checkpoint, as
            # trim_metrics drops their lines, so no step is shown twice
            self.board = SummaryWriter(str(run / "tensorboard"), purge_step=initial + 1)
        self.last_eval = ""

    def write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        with writing(self.run, "metrics.jsonl"):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        split = record["split"]
        figures = {k: v for k, v in record.items() if k not in ("step", "epoch", "split")}
        if self.board is not None:
            for key, value in figures.items():
                if isinstance(value, (int, float)) and key != "checkpoint_step":
                    self.board.add_scalar(f"{split}/{key}", value, record["step"])
        if split != "train":  # start, valid, test
            shown = " ".join(f"{k} {v:.4f}" for k, v in figures.items() if isinstance(v, float))
            if split == "valid":
                self.last_eval = " ".join(
                    f"{v:.3f}" for k, v in figures.items() if k != "loss" and isinstance(v, float)
                )[:24]
            log.info("step %d: %s %s", record["step"], split, shown)
        elif self.bar is not None:
            self.bar.update(record["step"] - self.bar.n)
            postfix = {"loss": f"{record['loss']:.3f}"}
            if "accuracy" in record:
                postfix["acc"] = f"{record['accuracy']:.2f}"
            postfix |= {"tok_s": f"{record['tokens_per_s']:.0f}", "eval": self.last_eval}
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.board is not None:
            self.board.close()
        if self.file is not None:
            self.file.close()
