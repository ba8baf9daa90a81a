"""``--compile``: a compiled run computes what an eager run computes, and the two resume from each
other's checkpoints; the config field is checked like every other."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from encoderkit.training.checkpoint import list_checkpoints, load_checkpoint, step_of
from encoderkit.training.config import TrainConfig
from encoderkit.training.loop import train
from encoderkit.training.objectives.classify import Classify
from encoderkit.training.runs import resume_config

# fp32, dropout off: the compiled kernels fuse and reorder the same sums, so the two runs agree
# to rounding. Measured worst relative difference of a loss over 8 steps and 2 evaluations:
# 1.1e-7 (listops, padded), 1.1e-7 (digits).
RTOL = 1e-5
# AdamW divides each gradient by its own running scale, so a weight whose gradient is all rounding
# noise moves by up to a learning-rate step either way: weights are compared to a small part of
# one step (lr 2e-3), as the gradient accumulation test does. Measured worst: 2.8e-6.
WEIGHT_ATOL = 1e-5

LISTOPS = {"task": "listops", "listops_train_size": 256, "listops_test_size": 100,
           "listops_max_length": 48, "n_layers": 2, "batch_size": 32, "dropout": 0.0,
           "max_steps": 8, "eval_every": 4, "checkpoint_every": 4, "progress": False}  # fmt: skip
DIGITS = {"n_layers": 2, "batch_size": 32, "dropout": 0.0, "max_steps": 6, "eval_every": 3,
          "checkpoint_every": 3, "progress": False}  # fmt: skip


def losses(run: Path) -> list[tuple[int, str, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["split"], r["loss"]) for r in map(json.loads, lines)]


def worst_relative_difference(a: Path, b: Path) -> float:
    la, lb = losses(a), losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb]  # the same steps and evaluations
    return max(abs(x[2] - y[2]) / abs(x[2]) for x, y in zip(la, lb, strict=True))


def weights(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    found = {step_of(path): path for path in list_checkpoints(run)}
    return load_checkpoint(found[max(found) if step is None else step])[0]


def assert_same_weights(ours: dict[str, torch.Tensor], eager: dict[str, torch.Tensor]) -> None:
    """The same keys, and every weight within WEIGHT_ATOL of eager's."""
    assert ours.keys() == eager.keys()
    for k in eager:
        torch.testing.assert_close(
            ours[k], eager[k], atol=WEIGHT_ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}"
        )


@pytest.fixture
def dynamo():
    """Fresh compile caches and counters: each test counts the graphs it compiled."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    counters.clear()


@pytest.mark.slow
def test_a_compiled_run_computes_the_eager_losses_and_resumes_in_eager(
    tmp_path, monkeypatch, dynamo
):
    """Padded batches (ListOps, each batch cut to its own longest sequence): the compiled forward
    matches eager, compiles one training and one evaluation graph for every length, and its
    checkpoints are the plain module's, which an eager run resumes."""
    eager, mixed = tmp_path / "eager", tmp_path / "mixed"
    train(TrainConfig(out=str(eager), **LISTOPS))
    shapes = []

    real = Classify.batch

    def recording(self, *args):
        rows = real(self, *args)
        shapes.append(tuple(rows["input_ids"].shape))
        return rows

    monkeypatch.setattr(Classify, "batch", recording)
    stopped = train(TrainConfig(out=str(mixed), compile=True, stop_at_step=4, **LISTOPS))
    monkeypatch.undo()
    assert stopped["steps"] == 4
    # One graph for training, one for evaluation, whatever the batches' lengths and sizes
    assert len({length for _, length in shapes}) >= 3, shapes  # measured: 4 lengths in 5 batches
    assert len({size for size, _ in shapes}) == 2, shapes  # 32 to train, 100 to evaluate
    assert dynamo["stats"]["unique_graphs"] == 2, dict(dynamo["stats"])
    assert_same_weights(weights(mixed, 4), weights(eager, 4))  # keys: no "_orig_mod." prefix

    train(resume_config(mixed, {"compile": False, "stop_at_step": None}), resume=True)
    assert worst_relative_difference(eager, mixed) <= RTOL
    assert_same_weights(weights(mixed), weights(eager))


@pytest.mark.slow
def test_an_eager_run_resumes_compiled_with_the_same_losses(tmp_path, dynamo):
    """Unpadded batches (digits): an eager checkpoint loads into the compiled run."""
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's bundled digits")
    eager, mixed = tmp_path / "eager", tmp_path / "mixed"
    train(TrainConfig(out=str(eager), **DIGITS))
    train(TrainConfig(out=str(mixed), stop_at_step=3, **DIGITS))
    train(resume_config(mixed, {"compile": True, "stop_at_step": None}), resume=True)
    assert dynamo["stats"]["unique_graphs"] == 2, dict(dynamo["stats"])
    assert worst_relative_difference(eager, mixed) <= RTOL
    assert_same_weights(weights(mixed), weights(eager))


@pytest.mark.slow
def test_a_compiled_run_resumes_bit_for_bit_with_dropout_on(tmp_path, dynamo):
    """Exact resume holds compiled too: the compiled graphs draw their dropout masks from the
    same generator state that checkpoints save."""
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's bundled digits")
    config = {**DIGITS, "dropout": 0.1, "compile": True}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(TrainConfig(out=str(straight), **config))
    train(TrainConfig(out=str(stopped), stop_at_step=3, **config))
    train(resume_config(stopped, {"stop_at_step": None}), resume=True)
    assert losses(stopped) == losses(straight)
    a, b = weights(straight), weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("value", "kind"), [("yes", "str"), (1, "int"), (None, "NoneType")])
def test_compile_must_be_a_bool(value, kind):
    with pytest.raises(TypeError, match=rf"compile must be bool, got {value!r} \({kind}\)"):
        TrainConfig(compile=value)


def test_compile_comes_from_toml_and_a_flag_overrides_it(tmp_path):
    from encoderkit.cli import build_parser
    from encoderkit.cli.train import train_config

    config = tmp_path / "run.toml"
    config.write_text("compile = true\n")
    args = build_parser().parse_args(["train", "--config", str(config)])
    assert train_config(args).compile is True
    args = build_parser().parse_args(["train", "--config", str(config), "--no-compile"])
    assert train_config(args).compile is False
    assert build_parser().parse_args(["train", "--compile"]).compile is True
    assert TrainConfig().compile is False

    config.write_text('compile = "yes"\n')
    args = build_parser().parse_args(["train", "--config", str(config)])
    with pytest.raises(TypeError, match=r"run.toml: compile must be bool, got 'yes' \(str\)"):
        train_config(args)


def test_the_compile_flag_says_what_it_costs(capsys):
    from encoderkit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--compile, --no-compile torch.compile the model's forward: the first steps" in help_text
    assert "on the CPU it needs a C++ compiler; default: False" in help_text


def test_resume_may_switch_compile_on_or_off(tmp_path):
    saved = {"config": asdict(TrainConfig(out=str(tmp_path))), "classes": ["a", "b"]}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert resume_config(tmp_path, {"compile": True}).compile is True
    with pytest.raises(ValueError, match=r"different configuration \(lr: saved 0.002, given 1"):
        resume_config(tmp_path, {"compile": True, "lr": 1.0})  # what the run computes: refused

    del saved["config"]["compile"]  # a run saved before the field existed trained eagerly
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert resume_config(tmp_path, {}).compile is False
    assert resume_config(tmp_path, {"compile": True}).compile is True


def test_compile_without_a_cxx_compiler_fails_before_any_work(tmp_path):
    from torch._inductor import config as inductor

    from encoderkit.cli import main

    run = tmp_path / "run"
    # Where inductor looks for its compiler: nothing usable there. inductor's own patch puts the
    # setting back afterwards (monkeypatch's undo would delete it from the config module)
    with inductor.patch({"cpp.cxx": ("encoderkit-test-no-such-c++",)}):
        with pytest.raises(ValueError, match=r"--compile on the CPU needs a C\+\+ compiler"):
            train(TrainConfig(out=str(run), compile=True, device="cpu"))
        with pytest.raises(
            SystemExit, match=r"encoderkit train: --compile on the CPU needs a C\+\+"
        ):
            main(["train", "--compile", "--device", "cpu", "--out", str(run)])
    assert not run.exists()
