"""The encoderkit command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from encoderkit.cli import main


def test_tour_prints_the_checks(capsys):
    assert main(["tour", "--preset", "tiny", "--batch", "2", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "encoder tiny: 2 layers, d_model 32, 4 heads of 8" in out
    assert "parameters: 17,088" in out  # 2 x (4 d^2 + 4 d + 2 d f + d + f + 4 d), d=32, f=64
    assert "bit-identical" in out


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit, match="must be at least 1"):
        main(["tour", "--batch", "0"])
    with pytest.raises(SystemExit):
        main(["tour", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "encoderkit", "tour", "--preset", "tiny", "--seq-len", "4"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "fused vs math path" in result.stdout
