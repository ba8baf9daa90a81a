"""Checkpoints: exact round trips, hashes that catch corruption, interrupted saves, retention,
and a state file read back without unpickling arbitrary objects."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from encoderkit.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

FILES = ("model.safetensors", "state.pt", "meta.json")


def make_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.fc1.weight": torch.randn(4, 3, generator=g),
        "encoder.fc2.weight": torch.randn(3, 4, generator=g).t(),  # not contiguous
        "embeddings.weight": torch.randn(5, 2, generator=g).to(torch.bfloat16),
        "position_ids": torch.arange(6),
    }


def make_state() -> dict[str, Any]:
    """What train.checkpoint saves: an AdamW state dict (int keys, tensors, a betas tuple, None
    and bools), the progress, the CPU RNG state (a ByteTensor), plus deeper nesting."""
    g = torch.Generator().manual_seed(1)
    group = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.05,
             "amsgrad": False, "foreach": None, "params": [0, 1]}  # fmt: skip
    moments = {
        i: {"step": torch.tensor(3.0), "exp_avg": torch.randn(shape, generator=g),
            "exp_avg_sq": torch.rand(shape, generator=g)}
        for i, shape in enumerate([(2, 3), (2,)])
    }  # fmt: skip
    return {
        "optimizer": {"state": moments, "param_groups": [group, {**group, "weight_decay": 0.0}]},
        "progress": {"step": 7, "best_accuracy": 0.75, "best_step": 5},
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": [],
        "nested": [1, 2.5, (3, [4.0, {"a": (5, 6.25)}]), {"b": [], "c": ()}],
    }


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Equal values of the same types all the way down: tuples stay tuples, tensors keep their
    dtype and values bit for bit."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(run: Path, step: int, **kwargs: Any) -> Path:
    return save_checkpoint(run, step, {"w": torch.full((2,), float(step))}, {}, {}, **kwargs)


def names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_save_then_load_gives_back_weights_state_and_meta(tmp_path):
    weights, state = make_weights(), make_state()
    meta = {"progress": {"step": 7, "best_step": 5}, "accuracy": 0.75}
    path = save_checkpoint(tmp_path, 7, weights, state, meta)
    assert path == tmp_path / "checkpoints" / "step-00000007"
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, "manifest.json"])
    got_weights, got_state, got_meta = load_checkpoint(path)
    assert sorted(got_weights) == sorted(weights)
    for key, tensor in weights.items():
        assert got_weights[key].dtype == tensor.dtype and torch.equal(got_weights[key], tensor)
    assert_same(state, got_state)
    assert got_meta == {"step": 7, **meta}
    # the RNG state is a usable one: it replays the same draws
    torch.set_rng_state(state["rng_cpu"])
    expected = torch.rand(5)
    torch.set_rng_state(got_state["rng_cpu"])
    assert torch.equal(torch.rand(5), expected)


def test_the_manifest_lists_the_sha256_of_the_three_files(tmp_path):
    path = save_checkpoint(tmp_path, 3, make_weights(), make_state(), {"loss": 1.5})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest == {"step": 3, "sha256": {name: sha256(path / name) for name in FILES}}


def test_an_interrupted_save_is_ignored_and_cleaned_up_by_the_next(tmp_path):
    for step in (1, 2):
        save(tmp_path, step, keep_last=5)
    root = tmp_path / "checkpoints"
    # killed before the manifest was written: all files but the manifest
    shutil.copytree(root / "step-00000002", root / "step-00000003")
    (root / "step-00000003" / "manifest.json").unlink()
    # killed while still in the temporary directory
    shutil.copytree(root / "step-00000002", root / ".tmp-step-00000004-0123abcd")
    assert list_checkpoints(tmp_path) == [root / "step-00000001", root / "step-00000002"]
    assert latest_checkpoint(tmp_path) == root / "step-00000002"
    weights, _, meta = load_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(weights["w"], torch.full((2,), 2.0)) and meta == {"step": 2}
    save(tmp_path, 5, keep_last=5)
    assert not [name for name in names(tmp_path) if name.startswith(".")]
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000001",
        "step-00000002",
        "step-00000005",
    ]


def test_list_checkpoints_is_oldest_first_by_step(tmp_path):
    for step in (30, 4, 100_000_000, 12):  # 9 digits: past the 8-digit zero padding
        save(tmp_path, step, keep_last=10)
    steps = [int(p.name.removeprefix("step-")) for p in list_checkpoints(tmp_path)]
    assert steps == [4, 12, 30, 100_000_000]


@pytest.mark.parametrize("name", FILES)
def test_a_corrupted_file_is_refused(tmp_path, name):
    path = save_checkpoint(tmp_path, 1, make_weights(), make_state(), {"loss": 1.0})
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)} does not match its SHA-256"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", FILES)
def test_a_missing_file_is_named(tmp_path, name):
    path = save(tmp_path, 1)
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)} is missing"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "manifest",
    [None, "", '{"step": 1, "sha256": {"model.s', '{"step": 1}', "[]", '"sha256"'],
    ids=["absent", "empty", "truncated", "no-hashes", "a-list", "a-string"],
)
def test_a_broken_manifest_is_refused(tmp_path, manifest):
    path = save(tmp_path, 1)
    if manifest is None:
        (path / "manifest.json").unlink()
    else:
        (path / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError, match="no valid manifest.json"):
        load_checkpoint(path)


@pytest.mark.parametrize("hashes", [[], "abc", None])
def test_a_manifest_whose_hashes_are_not_a_mapping_is_refused(tmp_path, hashes):
    path = save(tmp_path, 1)
    (path / "manifest.json").write_text(json.dumps({"step": 1, "sha256": hashes}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_latest_checkpoint_errors_name_the_place(tmp_path):
    nowhere = tmp_path / "nowhere"
    where = re.escape(str(nowhere))
    with pytest.raises(CheckpointError, match=f"can't find a run directory at {where}"):
        latest_checkpoint(nowhere)
    root = re.escape(str(tmp_path / "checkpoints"))
    with pytest.raises(CheckpointError, match=f"no valid checkpoint found in {root}"):
        latest_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "step-00000001").mkdir(parents=True)  # no manifest
    with pytest.raises(CheckpointError, match=f"no valid checkpoint found in {root}"):
        latest_checkpoint(tmp_path)


def test_retention_keeps_the_last_k_and_the_kept_steps(tmp_path):
    for step in range(1, 6):
        save(tmp_path, step, keep_last=2, keep={2})
    assert names(tmp_path) == ["step-00000002", "step-00000004", "step-00000005"]
    assert [p.name for p in list_checkpoints(tmp_path)] == names(tmp_path)
    weights, _, _ = load_checkpoint(tmp_path / "checkpoints" / "step-00000002")
    assert torch.equal(weights["w"], torch.full((2,), 2.0))


def test_retention_counts_only_complete_checkpoints(tmp_path):
    for step in (1, 2):
        save(tmp_path, step)
    (tmp_path / "checkpoints" / "step-00000003").mkdir()  # an incomplete directory
    save(tmp_path, 4, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]


def test_a_step_is_written_once_and_never_missing(tmp_path):
    first = save_checkpoint(tmp_path, 3, make_weights(0), make_state(), {"loss": 2.0})
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    second = save_checkpoint(tmp_path, 3, {"other": torch.arange(4.0)}, {"only": (1, 2)}, {})
    assert second == first
    assert {p.name: p.read_bytes() for p in second.iterdir()} == before  # kept as it was
    assert names(tmp_path) == ["step-00000003"]  # nothing renamed away, nothing left over


def test_an_incomplete_directory_of_the_same_step_is_replaced(tmp_path):
    stray = tmp_path / "checkpoints" / "step-00000003"
    stray.mkdir(parents=True)
    (stray / "model.safetensors").write_bytes(b"half")
    path = save_checkpoint(tmp_path, 3, make_weights(0), make_state(), {"loss": 2.0})
    weights, _, meta = load_checkpoint(path)
    assert meta == {"step": 3, "loss": 2.0}
    assert all(torch.equal(weights[k], v) for k, v in make_weights(0).items())


# A payload that records it was unpickled: torch.load(weights_only=False) would call this.
UNPICKLED: list[str] = []


def _unpickle_payload(note: str) -> str:
    UNPICKLED.append(note)
    return note


class Payload:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _unpickle_payload, ("payload ran",)


def test_state_pt_is_loaded_with_weights_only(tmp_path):
    path = save(tmp_path, 1)
    torch.save({"optimizer": {}, "payload": Payload()}, path / "state.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sha256"]["state.pt"] = sha256(path / "state.pt")  # the hashes all match
    (path / "manifest.json").write_text(json.dumps(manifest))
    UNPICKLED.clear()
    torch.load(path / "state.pt", weights_only=False)  # the file is a live payload ...
    assert UNPICKLED == ["payload ran"]
    UNPICKLED.clear()
    with pytest.raises(CheckpointError, match="state.pt holds objects that are not allowed"):
        load_checkpoint(path)
    assert UNPICKLED == []


def rehash(path: Path) -> None:
    """Make the manifest match the files as they are now: damage the hashes cannot see."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sha256"] = {name: sha256(path / name) for name in FILES}
    (path / "manifest.json").write_text(json.dumps(manifest))


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=5)
    root = tmp_path / "checkpoints"
    flip_a_bit(root / "step-00000003" / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="encoderkit.training.checkpoint"):
        assert latest_checkpoint(tmp_path) == root / "step-00000002"
    assert "skipping the corrupt checkpoint step-00000003: " in caplog.text
    assert "model.safetensors does not match its SHA-256" in caplog.text
    assert "using step-00000002, the newest intact checkpoint" in caplog.text
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002"]
    assert len(list_checkpoints(tmp_path, verify=False)) == 3  # cheap: nothing hashed
    for step in (1, 2):
        flip_a_bit(root / f"step-{step:08d}" / "state.pt")
    with pytest.raises(CheckpointError, match=r"no valid checkpoint found in .*checkpoints "
                       r"\(corrupt: step-00000003, step-00000002, step-00000001\)"):  # fmt: skip
        latest_checkpoint(tmp_path)


def test_a_checkpoint_copied_under_another_step_is_not_that_step(tmp_path):
    save(tmp_path, 2)
    root = tmp_path / "checkpoints"
    shutil.copytree(root / "step-00000002", root / "step-00000009")
    assert latest_checkpoint(tmp_path) == root / "step-00000002"
    with pytest.raises(CheckpointError, match="manifest.json is for step 2, not step 9"):
        load_checkpoint(root / "step-00000009")


@pytest.mark.parametrize(
    "name", ["step-00000400.bak", "step-400", "step-000000400", "step-0000040x"]
)
def test_names_that_are_not_exactly_step_nnnnnnnn_are_ignored(tmp_path, name):
    save(tmp_path, 2)
    root = tmp_path / "checkpoints"
    shutil.copytree(root / "step-00000002", root / name)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    assert latest_checkpoint(tmp_path) == root / "step-00000002"
    save(tmp_path, 3, keep_last=1)  # retention never touches what is not a checkpoint
    assert names(tmp_path) == sorted([name, "step-00000003"])


def test_directories_left_by_an_interrupted_removal_are_cleaned_up_by_the_next_save(tmp_path):
    for step in (1, 2):
        save(tmp_path, step, keep_last=5)
    root = tmp_path / "checkpoints"
    (root / "step-00000000").mkdir()  # rmtree killed when only the directory was left
    (root / "step-00000005").mkdir()
    (root / "step-00000005" / "state.pt").write_bytes(b"partly removed")
    save(tmp_path, 3, keep_last=5)
    assert names(tmp_path) == ["step-00000001", "step-00000002", "step-00000003"]


def test_retention_never_lets_a_corrupt_checkpoint_push_out_an_intact_one(tmp_path):
    for step in (1, 2):
        save(tmp_path, step, keep_last=2)
    flip_a_bit(tmp_path / "checkpoints" / "step-00000002" / "meta.json")
    save(tmp_path, 3, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000003"]


def test_a_corrupt_checkpoint_of_the_same_step_is_written_again(tmp_path):
    path = save(tmp_path, 3)
    flip_a_bit(path / "model.safetensors")
    save_checkpoint(tmp_path, 3, {"w": torch.full((2,), 7.0)}, {}, {})
    weights, _, _ = load_checkpoint(path)
    assert torch.equal(weights["w"], torch.full((2,), 7.0))


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("model.safetensors", lambda b: b[:-3], r"model.safetensors: truncated or padded"),
        (
            "model.safetensors",
            lambda b: b[:5],
            r"model.safetensors: truncated or not a safetensors",
        ),
        ("model.safetensors", lambda b: b + b"\0", r"model.safetensors: truncated or padded"),
        ("state.pt", lambda b: b[: len(b) // 2], "state.pt cannot be read"),
        ("meta.json", lambda b: b[:-4], "meta.json is not valid JSON"),
        ("meta.json", lambda b: b"[1, 2]", r"meta.json must hold an object, got \[1, 2\]"),
    ],
)
def test_damage_behind_a_matching_manifest_is_a_checkpoint_error(tmp_path, name, damage, message):
    path = save_checkpoint(tmp_path, 1, make_weights(), make_state(), {"loss": 1.0})
    (path / name).write_bytes(damage((path / name).read_bytes()))
    rehash(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_failed_save_removes_its_temporary_directory_and_names_the_last_intact_one(
    tmp_path, monkeypatch
):
    import encoderkit.training.checkpoint as ck

    save(tmp_path, 1)

    def full(state, path):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    intact = re.escape(str(tmp_path / "checkpoints" / "step-00000001"))
    full_disk = r"cannot save the checkpoint of step 2 in .*: no space left on device; "
    with pytest.raises(
        CheckpointError, match=full_disk + rf"the last intact checkpoint is {intact}$"
    ):
        save(tmp_path, 2)
    assert names(tmp_path) == ["step-00000001"]
    with pytest.raises(CheckpointError, match="no intact checkpoint has been saved yet"):
        save(tmp_path / "other", 1)
    assert list((tmp_path / "other" / "checkpoints").iterdir()) == []
