"""What the command line shares with the tools users know: ``--version``, a nearest-match hint
for a mistyped flag, command or choice (exit status 2, as argparse), no abbreviated flags, a line
of help for every flag and command, and ``train --help``'s examples, which parse."""

from __future__ import annotations

import argparse
import platform
import shlex
from pathlib import Path

import pytest
import torch

import encoderkit
from encoderkit.cli import build_parser, did_you_mean, main
from encoderkit.cli.train import EXAMPLES, train_config

ROOT = Path(__file__).resolve().parents[2]


def test_version_names_encoderkit_torch_and_python(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == (
        f"encoderkit {encoderkit.__version__} (torch {torch.__version__}, "
        f"Python {platform.python_version()})\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--epoch", "3"],
         "encoderkit train: unknown flag --epoch; did you mean --epochs?"),
        (["train", "--epoch=3"], "encoderkit train: unknown flag --epoch; did you mean --epochs?"),
        # a prefix is no abbreviation: it would stop working when a longer flag came
        (["train", "--max-step", "3"],
         "encoderkit train: unknown flag --max-step; did you mean --max-steps?"),
        (["train", "--no-progres"],
         "encoderkit train: unknown flag --no-progres; did you mean --no-progress?"),
        (["train", "--zzz"], "encoderkit train: unknown flag --zzz"),
        (["eval", "run", "--jsn"], "encoderkit eval: unknown flag --jsn; did you mean --json?"),
        (["trian"], "encoderkit: unknown command 'trian'; did you mean train?"),
        (["tour", "--preset", "tinny"],
         "encoderkit tour: argument --preset: invalid choice: 'tinny' (choose from "),
        (["tour", "surplus"], "encoderkit tour: unrecognized arguments: surplus"),
    ],
)  # fmt: skip
def test_a_mistyped_flag_command_or_choice_gets_the_nearest_one(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith(message)
    if "tinny" in argv:
        assert first.endswith("; did you mean tiny?")
    prog = "encoderkit" if argv == ["trian"] else f"encoderkit {argv[0]}"
    assert second == f"try '{prog} --help'"


def test_did_you_mean_lists_near_ties_only():
    assert did_you_mean("--lrr", ["--lr", "--seed", "--pack"]) == "; did you mean --lr?"
    assert did_you_mean("--d-mdel", ["--d-model", "--d-ff"]) == "; did you mean --d-model?"
    # tour's flags: 0.73 and 0.71, both near the best
    assert did_you_mean("--seq", ["--seed", "--seq-len", "--batch"]) == (
        "; did you mean --seed or --seq-len?"
    )
    assert did_you_mean("--zzz", ["--lr", "--epochs"]) == ""


def commands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_has_a_line_of_help():
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    assert sorted(helps) == sorted(commands()) == sorted(
        ["attention", "bench", "embed", "eval", "export", "heads", "plot", "predict", "tour",
         "train"]
    )  # fmt: skip
    assert all(text and "\n" not in text for text in helps.values()), helps


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_flag_and_argument_has_a_line_of_help(command):
    parser = commands()[command]
    missing = [
        action.option_strings or action.dest
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS or "\n" in action.help
    ]
    assert missing == [], f"encoderkit {command}: no help for {missing}"


def test_train_help_ends_with_examples_that_parse(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert out.endswith(EXAMPLES)
    commands_shown = [
        shlex.split(line.split("#")[0])
        for line in EXAMPLES.replace("\\\n", " ").splitlines()
        if line.startswith("  encoderkit train")
    ]
    assert len(commands_shown) == 6
    for argv in commands_shown:
        args = build_parser().parse_args(argv[1:])
        # the files they name are in the checkout
        for given in (getattr(args, "data", None), args.config):
            if given is not None and not str(given).startswith("runs/"):
                assert (ROOT / given).is_file(), given
        if args.resume is None and args.config is None:  # those read a run or file first
            config = train_config(args)
            assert config.task == argv[argv.index("--task") + 1]
