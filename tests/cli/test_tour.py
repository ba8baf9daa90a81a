"""The tour that `make demo` runs: its figures are the checks it claims to make."""

from __future__ import annotations

import pytest

from encoderkit.cli.tour import padded_lengths, run_tour


def test_padded_lengths_cover_full_partial_and_empty():
    assert padded_lengths(4, 64) == [64, 43, 21, 0]
    assert padded_lengths(1, 8) == [8]


@pytest.mark.parametrize("preset", ["tiny", "minilm_l6"])
def test_tour_figures(preset):
    lines: list[str] = []
    figures = run_tour(preset, batch=3, seq_len=16, log=lines.append)
    assert figures["max_abs_fused_vs_math"] < 1e-5
    assert figures["max_abs_fused_vs_float64"] < 1e-5
    assert figures["max_abs_math_vs_float64"] < 1e-5
    assert figures["max_abs_alone_vs_batched"] < 1e-5
    assert figures["max_abs_packed_vs_padded"] < 1e-5
    assert figures["max_abs_padded_outputs"] == 0.0
    assert figures["nan_count"] == 0.0
    assert figures["recording_changed_output"] == 0.0
    assert figures["max_row_sum_error"] < 1e-5
    text = "\n".join(lines)
    assert "parameters:" in text and "FLOPs per token" in text and "bit-identical" in text


def test_tour_rejects_unknown_preset():
    with pytest.raises(ValueError, match="preset must be one of .*got 'huge'"):
        run_tour("huge")


def test_tour_json_is_the_figures_run_tour_returns(capsys):
    import json

    from encoderkit.cli import main

    assert main(["tour", "--preset", "tiny", "--batch", "3", "--seq-len", "8", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()  # nothing but the JSON object
    figures = run_tour("tiny", batch=3, seq_len=8, seed=0, log=lambda line: None)
    assert json.loads(line) == {"preset": "tiny", "batch": 3, "seq_len": 8, "seed": 0, **figures}
