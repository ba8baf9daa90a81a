"""BERT's masking for the masked-LM objective (Devlin et al. 2019, section 3.1 and appendix A.1).

Of each sequence's ``n`` maskable tokens (real tokens that are not special: never [CLS], [SEP]
or padding), ``rate * n`` are chosen, rounded down or up at random with the probability that
makes the expected count exactly ``rate * n`` (so 15% of a 12-token line is 1 token 20% of the
time and 2 tokens 80% of the time). BERT's ``create_pretraining_data.py`` chooses
``max(1, round(rate * n))`` instead, harmless in its 512-token sequences, but here every line is
a sequence of its own (see ``objectives.mlm``), and on lines of ~12 tokens that rule masks 18%,
not 15%. A short line may thus have nothing to predict in one step; the rate holds on average.

Each chosen token is then, on its own draw, replaced by the mask token (80%), by a random token
(10%, drawn uniformly from ``replacements``: the vocabulary without special tokens; it may be
the token itself, as in BERT) or kept (10%). The loss predicts the original token at every
chosen position.

Whole-word masking (BERT's later release, Cui et al. 2021) chooses words instead, ``rate``
times the sequence's words, rounded the same way: a word is a maskable token marked as a word
start together with the maskable tokens that follow it up to the next word start (WordPiece's
"##" pieces), and a chosen word has all its pieces chosen, each replaced 80/10/10 on its own
draw, as in BERT's release. The share of tokens chosen is then ``rate`` on average over words of
every length.

Every draw comes from the given ``torch.Generator``, made on its device and then moved to the
tokens', in amounts that depend on the batch's shape alone: the same generator state masks the
same batch the same way, on any device.

Shape legend: B sequences, T tokens.
"""

from __future__ import annotations

import torch

MASK_SHARE = 0.8  # of the chosen tokens: replaced by the mask token
RANDOM_SHARE = 0.1  # replaced by a random token; the remaining 10% are kept


def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    rate: float,
    mask_id: int,
    replacements: torch.Tensor,
    generator: torch.Generator,
    word_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids (B, T), chosen (B, T) bool): ``ids`` with the chosen tokens replaced (see the
    module's docstring), and where they were chosen. ``maskable`` (B, T) bool: the tokens that
    may be chosen; ``replacements`` (R,) int64: the ids a random replacement draws from;
    ``word_start`` (B, T) bool: choose whole words (None: single tokens)."""
    if ids.dim() != 2 or maskable.shape != ids.shape or maskable.dtype != torch.bool:
        raise ValueError(
            f"expected ids (B, T) and a bool maskable mask of the same shape, got ids "
            f"{tuple(ids.shape)} and maskable {maskable.dtype} {tuple(maskable.shape)}"
        )
    if word_start is not None and (word_start.shape != ids.shape or word_start.dtype != torch.bool):
        raise ValueError(
            f"word_start must be a bool mask shaped like ids {tuple(ids.shape)}, got "
            f"{word_start.dtype} {tuple(word_start.shape)}"
        )
    if not 0 < rate < 1:
        raise ValueError(f"rate must be between 0 and 1 (exclusive), got {rate}")
    if replacements.dim() != 1 or replacements.numel() == 0:
        raise ValueError(
            f"replacements must be a non-empty 1-D tensor of token ids, got shape "
            f"{tuple(replacements.shape)}"
        )
    # draws on the generator's device, then moved: the same masking on the CPU and on CUDA
    on = generator.device
    scores = torch.rand(ids.shape, generator=generator, device=on).to(ids.device)  # the choice
    action = torch.rand(ids.shape, generator=generator, device=on).to(ids.device)  # 80/10/10
    pick = torch.randint(replacements.numel(), ids.shape, generator=generator, device=on)
    pick = pick.to(ids.device)  # (B, T): which replacement a random token takes
    rounding = torch.rand(len(ids), generator=generator, device=on).to(ids.device)  # (B,)
    if word_start is None:
        chosen = _choose(scores, maskable, rate, rounding)
    else:
        # a word starts at a marked token, or at a maskable one after an unmaskable one ([CLS])
        after = torch.cat([maskable.new_zeros(len(ids), 1), maskable[:, :-1]], dim=1)
        starts = maskable & (word_start | ~after)
        word = starts.cumsum(dim=1)  # (B, T): 1, 2, ... the word each token belongs to
        chosen_start = _choose(scores, starts, rate, rounding)
        chosen_word = torch.zeros(len(ids), ids.shape[1] + 1, dtype=torch.bool, device=ids.device)
        chosen_word.scatter_(1, torch.where(starts, word, 0), chosen_start)  # (B, words + 1)
        chosen_word[:, 0] = False  # word 0: the tokens before the first word ([CLS])
        chosen = maskable & chosen_word.gather(1, word)
    masked = torch.where(chosen & (action < MASK_SHARE), mask_id, ids)
    random = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
    masked = torch.where(random, replacements.to(ids.device)[pick], masked)
    return masked, chosen


def _choose(
    scores: torch.Tensor, allowed: torch.Tensor, rate: float, rounding: torch.Tensor
) -> torch.Tensor:
    """(B, T) bool: in each row, the ``floor(rate * allowed + rounding)`` allowed positions
    with the lowest scores: ``rate * allowed`` rounded down or up, up with the probability of its
    fractional part, for ``rounding`` uniform in [0, 1)."""
    count = allowed.sum(dim=1)  # (B,)
    k = torch.floor(rate * count + rounding)  # (B,)
    scores = torch.where(allowed, scores, 2.0)  # scores lie in [0, 1): the allowed come first
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, T): each position's place in its row
    return allowed & (rank < k[:, None])
