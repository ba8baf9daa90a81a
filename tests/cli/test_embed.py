"""``encoderkit embed``'s precision and compile flags (the rest of the command: test_cli.py)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import write_minilm_tokenized_dir

from encoderkit.cli import embed as embed_cli
from encoderkit.cli import main
from encoderkit.models import sentence


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_minilm_tokenized_dir(tmp_path_factory.mktemp("tiny-sentence-model"))


TEXTS = ["A man is playing a guitar.", "Stocks fell.", "short", "Café 東京 🙂"]


def embed_json(capsys, *args: str) -> torch.Tensor:
    assert main(["embed", "--json", *args, *TEXTS]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["texts"] == TEXTS
    return torch.tensor(payload["embeddings"])  # float32 -> JSON -> float32 is exact


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precision_reaches_encode(capsys, tiny_model, precision):
    out = embed_json(capsys, "--model", str(tiny_model), "--precision", precision)
    encoder = sentence.SentenceEncoder.from_pretrained(tiny_model)
    expected = encoder.encode(TEXTS, precision=precision, convert_to_tensor=True)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    fp32 = encoder.encode(TEXTS, precision="fp32", convert_to_tensor=True)
    assert torch.equal(out, fp32) == (precision == "fp32")  # half precision changed the digits
    if precision == "fp32":  # the default
        torch.testing.assert_close(embed_json(capsys, "--model", str(tiny_model)), out)


def test_compile_flag_reaches_the_encoder(capsys, tiny_model, monkeypatch):
    calls = []
    load = sentence.SentenceEncoder.from_pretrained

    def spy(name_or_path, compile=False):
        calls.append(compile)
        return load(name_or_path)  # eager: compiling is test_sentence.py's (slow) business

    monkeypatch.setattr(sentence.SentenceEncoder, "from_pretrained", spy)
    embed_json(capsys, "--model", str(tiny_model), "--compile")
    embed_json(capsys, "--model", str(tiny_model))
    assert calls == [True, False]


def test_unknown_precision_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--precision", "int8", "hello"])
    assert "argument --precision: invalid choice: 'int8'" in capsys.readouterr().err


def test_the_cli_offers_every_precision_encode_takes():
    assert embed_cli.PRECISIONS == tuple(sentence.PRECISIONS)


@pytest.mark.parametrize("chunk", [2, 4096])  # the running top-k across chunks, and one chunk
def test_query_ranks_the_file_like_a_full_sort(capsys, tiny_model, tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(embed_cli, "EMBED_CHUNK", chunk)
    lines = [f"line {i} about {w}" for i, w in enumerate(["cats", "stocks", "guitars"] * 3)]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    args = ["embed", "--model", str(tiny_model), "--file", str(path), "--json", "--top-k", "4"]
    assert main([*args, "--query", "a guitar", "--query", "markets"]) == 0
    got = json.loads(capsys.readouterr().out)
    encoder = sentence.SentenceEncoder.from_pretrained(tiny_model)
    vectors = encoder.encode(lines, convert_to_tensor=True)
    for result, query in zip(got, ["a guitar", "markets"], strict=True):
        scores = vectors @ encoder.encode(query, convert_to_tensor=True)  # (N,)
        order = torch.argsort(scores, descending=True, stable=True)[:4]
        assert result["query"] == query
        assert [r["text"] for r in result["results"]] == [lines[i] for i in order]
        want = [float(scores[i]) for i in order]
        assert [r["score"] for r in result["results"]] == pytest.approx(want, abs=1e-6)


def test_query_prints_a_ranked_list_and_refuses_bad_combinations(capsys, tiny_model):
    args = ["embed", "--model", str(tiny_model), "--top-k", "2", "--query", "guitar", *TEXTS]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "query: guitar" and len(out) == 3
    assert out[1].startswith("  1. ") and out[2].startswith("  2. ")
    with pytest.raises(SystemExit, match="--top-k must be at least 1"):
        main([*args, "--top-k", "0"])
    with pytest.raises(SystemExit, match="give --query or --similarity, not both"):
        main([*args, "--similarity"])
