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
    expected = encoder.encode(TEXTS, precision=precision)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    fp32 = encoder.encode(TEXTS, precision="fp32")
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
