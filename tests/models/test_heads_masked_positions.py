"""MaskedLM's ``positions``: the head on the chosen positions only gives exactly the full
forward's logits at those positions, row by row, and bad masks are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import TEXT as TINY
from tiny import perturb, text_batch

from encoderkit.models.heads import HeadConfig, MaskedLM

TEXT = dataclasses.replace(TINY, vocab_size=60)  # text_batch draws ids below 60


@pytest.mark.parametrize("head", [None, HeadConfig()])  # BERT's dense head; no transform at all
def test_positions_give_the_full_logits_at_those_positions(head):
    model = perturb(MaskedLM(TEXT, head=head))
    ids, mask = text_batch(3, 9, seed=1)
    g = torch.Generator().manual_seed(2)
    positions = (torch.rand(ids.shape, generator=g) < 0.4) & mask.bool()
    positions[0, 0] = positions[2, 8] = True  # a real position and a padded one
    with torch.no_grad():
        full = model(ids, mask)  # (B, T, V)
        chosen = model(ids, mask, positions=positions)  # (M, V)
    assert chosen.shape == (int(positions.sum()), TEXT.vocab_size)
    torch.testing.assert_close(chosen, full[positions], rtol=0, atol=1e-6)
    # row-major order: the first row's chosen positions come first
    first = int(positions[0].sum())
    torch.testing.assert_close(chosen[:first], full[0][positions[0]], rtol=0, atol=1e-6)


def test_no_position_chosen_gives_no_logits_and_a_gradient_of_zero():
    model = MaskedLM(TEXT)
    ids, mask = text_batch(2, 5, seed=0)
    logits = model(ids, mask, positions=torch.zeros(ids.shape, dtype=torch.bool))
    assert logits.shape == (0, TEXT.vocab_size)
    logits.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_positions_without_it_the_forward_is_unchanged():
    model = perturb(MaskedLM(TEXT))
    ids, mask = text_batch(2, 6, seed=3)
    with torch.no_grad():
        every = model(ids, mask, positions=torch.ones(ids.shape, dtype=torch.bool))
        full = model(ids, mask)
    assert full.shape == (2, 6, TEXT.vocab_size)
    torch.testing.assert_close(every, full.reshape(12, -1), rtol=0, atol=0)


@pytest.mark.parametrize(
    "positions", [torch.ones(2, 6, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool)]
)
def test_a_positions_mask_of_the_wrong_kind_is_refused(positions):
    ids, mask = text_batch(2, 6, seed=3)
    with pytest.raises(ValueError, match=r"positions must be a bool mask shaped like input_ids"):
        MaskedLM(TEXT)(ids, mask, positions=positions)


def test_positions_export_with_torch_export():
    model = perturb(MaskedLM(TEXT))
    ids, mask = text_batch(2, 6, seed=4)
    positions = mask.bool() & (torch.arange(6) % 2 == 0)
    program = torch.export.export(model, (ids, mask), {"positions": positions})
    with torch.no_grad():
        expected = model(ids, mask, positions=positions)
    torch.testing.assert_close(
        program.module()(ids, mask, positions=positions), expected, rtol=0, atol=1e-6
    )
