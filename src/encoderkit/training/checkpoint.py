"""Training checkpoints that survive crashes.

A checkpoint is a directory ``RUN/checkpoints/step-00000120/`` holding

* ``model.safetensors``: the weights;
* ``state.pt``: optimizer state, step, data position and RNG states, read back with
  ``torch.load(weights_only=True)`` (tensors and plain containers only, never arbitrary pickles);
* ``meta.json``: the step and the metrics at that step;
* ``manifest.json``: SHA-256 of the three files above, written last.

It is built in a temporary sibling directory, every file fsynced, and renamed into place in one
``os.replace``; only directories named exactly ``step-NNNNNNNN`` with a manifest whose hashes match
count as checkpoints. A process killed mid-save therefore leaves at most a ``.tmp-*`` directory,
which the next save removes, and the previous checkpoint stays the latest; a save that fails (disk
full) removes its temporary directory and says which checkpoint is the last intact one.

Hashing every checkpoint of a big model on every listing would be slow, so verification is lazy:
:func:`latest_checkpoint` walks from the newest down and returns the first that verifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from encoderkit.utils.checks import check_choice
from encoderkit.utils.files import describe_os_error, fsync_path

PREFIX, TMP_PREFIX = "step-", ".tmp-"
RUN_MARKER = "encoderkit-run.json"  # written first (runs.py): what makes a directory a run of ours
FILES = ("model.safetensors", "state.pt", "meta.json")
MANIFEST = "manifest.json"
_NAME = re.compile(rf"{PREFIX}(\d{{8,}})")

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A missing, incomplete or corrupt checkpoint, or one that could not be written."""


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
    final = root / f"{PREFIX}{step:08d}"
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        if (final / MANIFEST).is_file():
            if _is_valid(final):
                _purge(root, keep_last, keep or set(), final)
                return final
            log.warning("replacing the corrupt checkpoint %s", final)
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
        tmp = None
        fsync_path(root)
    except BaseException as e:
        if tmp is not None:  # never leave half a checkpoint behind, whatever stopped the save
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise CheckpointError(_save_failure(run_dir, step, e)) from e
        raise
    _purge(root, keep_last, keep or set(), final)
    return final


def _save_failure(run_dir: Path, step: int, error: OSError) -> str:
    try:
        last = f"the last intact checkpoint is {latest_checkpoint(run_dir)}"
    except CheckpointError:
        last = "no intact checkpoint has been saved yet"
    return (
        f"cannot save the checkpoint of step {step} in {checkpoint_dir(run_dir)}: "
        f"{describe_os_error(error)}; {last}"
    )


def _remove_leftovers(root: Path) -> None:
    """Remove what killed processes left: temporary directories of a save, and checkpoint
    directories without a manifest (a save that predates the manifest-last order, or a removal
    by :func:`_purge` cut short). Only this run's single writer saves, so none is in use."""
    for path in root.iterdir():
        if path.name.startswith(TMP_PREFIX) or (
            parse_step(path.name) is not None and not (path / MANIFEST).is_file()
        ):
            shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(run_dir: Path, *, verify: bool = True) -> list[Path]:
    """Checkpoints, oldest first: those whose files match their manifest, or with
    ``verify=False`` every directory that has a manifest (cheap; nothing is hashed)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    steps = {path: parse_step(path.name) for path in root.iterdir()}
    found = sorted(
        (step, path)
        for path, step in steps.items()
        if step is not None and (path / MANIFEST).is_file()
    )
    return [path for _, path in found if not verify or _is_valid(path)]


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint whose files match their manifest, or a clear error. A corrupt newer
    one is skipped with a warning that names it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"can't find a run directory at {run_dir}")
    corrupt = []
    for path in reversed(list_checkpoints(run_dir, verify=False)):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping the corrupt checkpoint %s: %s", path.name, e)
            corrupt.append(path.name)
            continue
        if corrupt:
            log.warning("using %s, the newest intact checkpoint", path.name)
        return path
    found = f" (corrupt: {', '.join(corrupt)})" if corrupt else ""
    raise CheckpointError(f"no valid checkpoint found in {checkpoint_dir(run_dir)}{found}")


def verify_checkpoint(path: Path) -> None:
    """Check that every file of a checkpoint is there and matches its SHA-256 in the manifest."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        hashes = manifest["sha256"]
        if not isinstance(hashes, dict):
            raise TypeError(f"sha256 must map file names to hashes, got {hashes!r}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: no valid {MANIFEST} ({e})") from e
    step = parse_step(path.name)
    if step is not None and manifest.get("step") != step:  # a directory copied or renamed
        raise CheckpointError(
            f"{path}: {MANIFEST} is for step {manifest.get('step')!r}, not step {step}"
        )
    for name in FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        try:
            digest = _sha256(path / name)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read {name}: {describe_os_error(e)}") from e
        if digest != hashes.get(name):
            raise CheckpointError(f"{path}: {name} does not match its SHA-256 in {MANIFEST}")


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, state, meta) of one checkpoint directory, after checking every file's hash."""
    path = Path(path)
    verify_checkpoint(path)
    read_weights_header(path / "model.safetensors")  # a clear error for a truncated file
    try:
        weights = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: model.safetensors cannot be read ({e})") from e
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # something other than tensors and plain containers
        raise CheckpointError(f"{path}: state.pt holds objects that are not allowed ({e})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # truncated or not a torch file
        raise CheckpointError(f"{path}: state.pt cannot be read ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state.pt must hold a dict, got {type(state).__name__}")
    return weights, state, read_meta(path)


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json alone (the caller has verified the checkpoint)."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: meta.json is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta.json must hold an object, got {meta!r}")
    return meta


def read_weights_header(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a ``model.safetensors`` holds, from its header alone (no tensor data is
    read), after checking that the file is as long as the header says."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 0 < n <= size - 8:
                raise CheckpointError(
                    f"{path}: truncated or not a safetensors file ({size} bytes, header of "
                    f"{n} bytes)"
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it: {describe_os_error(e)}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file: its header is not JSON") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file: its header is not an object")
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        shape = spec.get("shape") if isinstance(spec, dict) else None
        offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
        ):
            raise CheckpointError(f"{path}: the header entry of {key} is malformed: {spec!r}")
        shapes[key] = tuple(shape)
        end = max(end, offsets[1])
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path}: truncated or padded: its header describes {8 + n + end} bytes, the file "
            f"has {size}"
        )
    return shapes


def parse_step(name: str) -> int | None:
    """The step of a checkpoint directory name ``step-NNNNNNNN``; None for any other name
    (``step-00000400.bak``, ``step-12``)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    step = int(match.group(1))
    return step if name == f"{PREFIX}{step:08d}" else None


def step_of(path: Path) -> int:
    step = parse_step(Path(path).name)
    if step is None:
        raise CheckpointError(f"{path}: not a checkpoint directory (expected {PREFIX}NNNNNNNN)")
    return step


def _is_valid(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointError:
        return False
    return True


def _purge(root: Path, keep_last: int, keep: set[int], written: Path) -> None:
    """Keep the ``keep_last`` newest intact checkpoints and the steps in ``keep``; remove the
    older ones. Newest first, hashing only until ``keep_last`` intact ones are found, so a
    corrupt checkpoint never takes the place of an intact one it would push out."""
    intact = 0
    for path in reversed(list_checkpoints(root.parent, verify=False)):
        if intact < max(keep_last, 1):
            intact += path == written or _is_valid(path)
        elif step_of(path) not in keep:
            shutil.rmtree(path, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pick_checkpoint(run: Path, which: Literal["best", "latest"]) -> Path:
    """The newest intact checkpoint, or the best one it records; a best checkpoint that is gone
    is an error, never silently the latest."""
    check_choice("which", which, ("best", "latest"))
    latest = latest_checkpoint(run)
    if which == "latest":
        return latest
    progress = saved_progress(read_meta(latest).get("progress", {}))
    if progress.get("best_score") is None:
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


def saved_progress(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's progress record in today's fields: runs saved before objectives called the
    metric ``accuracy``; and before None meant "not measured", a negative value did."""
    saved = dict(saved)
    for old, new in (("accuracy", "score"), ("best_accuracy", "best_score")):
        if old in saved:
            saved[new] = saved.pop(old)
        if saved.get(new) is not None and saved[new] < 0:
            saved[new] = None
    return saved
