"""BERT's masking: rate * maskable tokens chosen per sequence, rounded down or up at random so the
rate is exact on average even on short lines; never a special token; 80/10/10 mask / random /
kept within tight bands (and exactly, for a fixed seed); whole words chosen complete; and the
same generator seed masking the same way."""

from __future__ import annotations

import math

import pytest
import torch

from encoderkit.training.data.masking import mask_tokens

MASK = 3
REPLACEMENTS = torch.arange(10, 100)  # the "vocabulary" without special tokens 0..9
CLS, SEP = 1, 2


def sequences(lengths: list[int], width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] tokens [SEP] rows right-padded with 0, and the maskable tokens (not CLS/SEP/pad)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.int64)
    for row, n in enumerate(lengths):
        ids[row, : n + 2] = torch.cat(
            [torch.tensor([CLS]), torch.randint(10, 100, (n,), generator=g), torch.tensor([SEP])]
        )
    return ids, ids >= 10


def mask(ids, maskable, seed, rate=0.15, word_start=None):
    return mask_tokens(
        ids,
        maskable,
        rate=rate,
        mask_id=MASK,
        replacements=REPLACEMENTS,
        generator=torch.Generator().manual_seed(seed),
        word_start=word_start,
    )


def test_each_sequence_gets_rate_times_its_tokens_rounded_down_or_up():
    lengths = [0, 1, 3, 6, 7, 10, 20, 33, 100]
    ids, maskable = sequences(lengths, 102, seed=0)
    _, chosen = mask(ids, maskable, seed=1)
    counts = chosen.sum(dim=1).tolist()
    assert counts == [0, 0, 0, 1, 1, 1, 3, 4, 15]  # 0.15 n: 0, .15, .45, .9, 1.05, 1.5, 3, 4.95, 15
    for c, n in zip(counts, lengths, strict=True):
        assert c in (math.floor(0.15 * n), math.ceil(0.15 * n))
    assert not (chosen & ~maskable).any()  # never [CLS], [SEP] or padding


def test_the_rate_holds_on_average_on_short_lines():
    ids, maskable = sequences([11] * 4000, 13, seed=14)  # 1.65 tokens each: 1 or 2
    _, chosen = mask(ids, maskable, seed=15)
    counts = chosen.sum(dim=1)
    assert set(counts.tolist()) == {1, 2}
    assert int(counts.sum()) == 6585  # 6600 expected; sd of the sum sqrt(4000 * .65 * .35) = 30
    assert abs(float(counts.float().mean()) - 1.65) < 5 * (0.65 * 0.35 / 4000) ** 0.5


def test_the_80_10_10_split_exactly_for_a_seed_and_within_bands():
    ids, maskable = sequences([98] * 400, 100, seed=2)
    masked, chosen = mask(ids, maskable, seed=3)
    n = int(chosen.sum())
    assert n == 5867  # 14.7 per sequence: 5880 expected, sd sqrt(400 * .7 * .3) = 9
    to_mask = int((masked[chosen] == MASK).sum())
    kept = int((masked[chosen] == ids[chosen]).sum())
    random = n - to_mask - kept
    assert (to_mask, random, kept) == (4666, 563, 638)  # kept: 1 in 90 random draws too
    # binomial bands: 5 standard deviations of n = 6000 draws
    assert abs(to_mask / n - 0.8) < 5 * (0.8 * 0.2 / n) ** 0.5
    assert abs(random / n - 0.1) < 5 * (0.1 * 0.9 / n) ** 0.5
    assert abs(kept / n - 0.1) < 5 * (0.1 * 0.9 / n) ** 0.5
    # outside the chosen positions nothing changes; replacements come from REPLACEMENTS only
    assert torch.equal(masked[~chosen], ids[~chosen])
    replaced = masked[chosen & (masked != MASK)]
    assert bool(((replaced >= 10) & (replaced < 100)).all())


def test_the_choice_is_uniform_over_positions():
    ids, maskable = sequences([20] * 2000, 22, seed=4)
    _, chosen = mask(ids, maskable, seed=5)
    share = chosen[:, 1:21].float().mean(dim=0)  # (20,): each position's share, 3 / 20 expected
    assert abs(float(share.mean()) - 0.15) < 1e-7
    assert float((share - 0.15).abs().max()) < 5 * (0.15 * 0.85 / 2000) ** 0.5


def test_same_generator_seed_masks_the_same_way_and_another_seed_does_not():
    ids, maskable = sequences([30, 12, 50], 52, seed=6)
    first = mask(ids, maskable, seed=7)
    again = mask(ids, maskable, seed=7)
    other = mask(ids, maskable, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])


def words_of(word_start: torch.Tensor, maskable: torch.Tensor) -> list[list[list[int]]]:
    """Per row, each word's positions: a start and the maskable non-starts after it."""
    rows = []
    for starts, real in zip(word_start.tolist(), maskable.tolist(), strict=True):
        words: list[list[int]] = []
        for t, (start, ok) in enumerate(zip(starts, real, strict=True)):
            if ok and (start or not words or not real[t - 1]):
                words.append([t])
            elif ok:
                words[-1].append(t)
        rows.append(words)
    return rows


def test_whole_words_are_chosen_complete():
    ids, maskable = sequences([40] * 300, 42, seed=9)
    g = torch.Generator().manual_seed(10)
    word_start = torch.rand(ids.shape, generator=g) < 0.6  # words of 1 to several pieces
    word_start[:, 1] = False  # a row's first token continues a word cut off before it
    masked, chosen = mask(ids, maskable, seed=11, word_start=word_start)
    counts = []
    for row, words in enumerate(words_of(word_start, maskable)):
        picked = [chosen[row, w].tolist() for w in words]
        assert all(all(p) or not any(p) for p in picked)  # a word is chosen whole or not at all
        counts.append(sum(p[0] for p in picked))
        assert counts[-1] in (math.floor(0.15 * len(words)), math.ceil(0.15 * len(words)))
        assert sum(len(w) for w in words) == 40  # every maskable token belongs to a word
    assert not (chosen & ~maskable).any()
    share = float(chosen.sum()) / float(maskable.sum())
    assert abs(share - 0.15) < 0.01  # words of 1.7 pieces on average: the token rate holds
    # the pieces of a chosen word are replaced each on its own draw
    assert 0.75 < float((masked[chosen] == MASK).float().mean()) < 0.85


def test_a_sequence_without_maskable_tokens_is_left_alone():
    ids, maskable = sequences([0, 5], 7, seed=12)
    masked, chosen = mask(ids, maskable, seed=13, word_start=maskable.clone())
    assert chosen[0].sum() == 0 and chosen[1].sum() == 1  # 0.75 rounded up this time
    assert torch.equal(masked[0], ids[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rate": 0.0}, r"rate must be between 0 and 1"),
        ({"rate": 1.0}, r"rate must be between 0 and 1"),
        ({"maskable": torch.ones(2, 5, dtype=torch.long)}, r"bool maskable mask"),
        ({"word_start": torch.ones(2, 4, dtype=torch.bool)}, r"word_start must be a bool mask"),
        ({"replacements": torch.tensor([], dtype=torch.long)}, r"replacements must be a non-empty"),
    ],
)
def test_bad_arguments_are_refused(change, message):
    ids = torch.full((2, 5), 20)
    kwargs = {
        "maskable": torch.ones(2, 5, dtype=torch.bool),
        "rate": 0.15,
        "mask_id": MASK,
        "replacements": REPLACEMENTS,
        "generator": torch.Generator(),
    } | change
    with pytest.raises(ValueError, match=message):
        mask_tokens(ids, **kwargs)
