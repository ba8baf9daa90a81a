"""Training checkpoints that survive crashes.

A checkpoint is a directory ``RUN/checkpoints/step-00000120/`` holding

* ``model.safetensors``: the weights;
* ``state.pt``: optimizer state, step, data position and RNG states, read back with
  ``torch.load(weights_only=True)`` (tensors and plain containers only, never arbitrary pickles);
* ``meta.json``: the step and the metrics at that step;
* ``manifest.json``: SHA-256 of the three files above, written last.

It is built in a temporary sibling directory, every file fsynced, and renamed into place in one
``os.replace``; only directories with a manifest whose hashes match count as checkpoints. A process
killed mid-save therefore leaves at most a ``.tmp-*`` directory, which the next save removes, and
the previous checkpoint stays the latest.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from encoderkit.files import fsync_path

PREFIX, TMP_PREFIX = "step-", ".tmp-"
FILES = ("model.safetensors", "state.pt", "meta.json")
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A missing, incomplete or corrupt checkpoint."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: set[int] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then keep only the ``keep_last`` newest and the
    steps in ``keep`` (the best one, say). Returns the checkpoint directory.

    A step is written once: if its complete checkpoint exists (saved for a new best and again on
    schedule, say), it is kept as it is, so no moment ever lacks it.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TMP_PREFIX}*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"{PREFIX}{step:08d}"
    if (final / MANIFEST).is_file():
        _purge(root, keep_last, keep or set())
        return final
    shutil.rmtree(final, ignore_errors=True)  # an incomplete directory of that name, if any
    tmp = root / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2) + "\n")
    hashes = {name: _sha256(tmp / name) for name in FILES}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "sha256": hashes}, indent=2) + "\n")
    for name in (*FILES, MANIFEST):
        fsync_path(tmp / name)
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(root)
    _purge(root, keep_last, keep or set())
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if (p / MANIFEST).is_file()]
    return sorted(found, key=step_of)


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run, or a clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"can't find a run directory at {run_dir}")
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no valid checkpoint found in {checkpoint_dir(run_dir)}")
    return found[-1]


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, state, meta) of one checkpoint directory, after checking every file's hash."""
    path = Path(path)
    try:
        hashes = json.loads((path / MANIFEST).read_text())["sha256"]
        if not isinstance(hashes, dict):
            raise TypeError(f"sha256 must map file names to hashes, got {hashes!r}")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: no valid {MANIFEST} ({e})") from e
    for name in FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(path / name) != hashes.get(name):
            raise CheckpointError(f"{path}: {name} does not match its SHA-256 in {MANIFEST}")
    weights = load_file(str(path / "model.safetensors"))
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # something other than tensors and plain containers
        raise CheckpointError(f"{path}: state.pt holds objects that are not allowed ({e})") from e
    meta = json.loads((path / "meta.json").read_text())
    return weights, state, meta


def step_of(path: Path) -> int:
    return int(path.name.removeprefix(PREFIX))


def _purge(root: Path, keep_last: int, keep: set[int]) -> None:
    found = list_checkpoints(root.parent)  # complete ones only count
    for old in found[: -max(keep_last, 1)]:  # never the one just written
        if step_of(old) not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
