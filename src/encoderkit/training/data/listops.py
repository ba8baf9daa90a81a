"""ListOps: nested list operations on digits, the long-sequence task of Long Range Arena.

Nangia & Bowman (2018), "ListOps: A Diagnostic Dataset for Latent Tree Learning"; Tay et al.
(2021), "Long Range Arena", section 3.1. An expression is a digit or ``[OP arg arg ... ]``, and
the label is its value, 0..9:

* ``[MAX`` and ``[MIN``: the largest and the smallest argument;
* ``[MED``: the median as LRA's generator computes it, ``int(np.median(args))``: the middle
  element for an odd count and, for an even count, the mean of the two middle elements truncated
  to an integer, so ``[MED 1 4 ]`` is 2 (not 1, the lower middle element);
* ``[SM``: the sum modulo 10.

``generate`` draws trees from the same distribution as LRA's generator
(``lra_benchmarks/data/listops.py``): each node below ``max_depth`` is an operator with
probability 1/4, otherwise a uniform digit (the root counts as depth 1, so operators nest at most
``max_depth - 1`` deep); an operator takes a uniform 2..``max_args`` arguments and is one of the
four uniformly. Expressions whose token count falls outside the bounds are rejected, and
duplicates are dropped as LRA drops them. LRA itself used ``max_depth=10, max_args=10`` and kept
lengths strictly between 500 and 2000; our bounds are inclusive.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

OPERATORS: list[str] = ["[MAX", "[MIN", "[MED", "[SM"]
DIGITS: list[str] = [str(d) for d in range(10)]
END = "]"
VOCAB: list[str] = ["<pad>", "<cls>", *DIGITS, *OPERATORS, END]
PAD_ID = 0
CLS_ID = 1

_TOKEN_ID = {token: i for i, token in enumerate(VOCAB) if i not in (PAD_ID, CLS_ID)}
_OPERATOR_P = 0.25  # LRA's VALUE_P: a node below max_depth is an operator with this probability


def _median(args: list[int]) -> int:
    """``int(np.median(args))`` for non-negative integers, without numpy's per-call overhead."""
    ordered = sorted(args)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) // 2  # == int(mean) as both are >= 0


_APPLY: dict[str, Callable[[list[int]], int]] = {
    "[MAX": max,
    "[MIN": min,
    "[MED": _median,
    "[SM": lambda args: sum(args) % 10,
}


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def evaluate(tokens: Sequence[str]) -> int:
    """The value (0..9) of one ListOps expression given as tokens.

    Uses an explicit stack, so nesting depth is limited by memory, not by Python's recursion
    limit. An operator needs at least one argument. Malformed input raises ``ValueError`` naming
    the position (0-based token index) where it goes wrong.
    """
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a list of str (see tokenize), got {type(tokens).__name__}")
    if len(tokens) == 0:
        raise ValueError("expected a ListOps expression, got no tokens")
    stack: list[tuple[str, list[int], int]] = []  # open operators: (operator, args, position)
    result: int | None = None
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TypeError(f"token at position {i} must be a str, got {type(token).__name__}")
        if result is not None:
            raise ValueError(
                f"unexpected token {token!r} at position {i}: the expression already ended at "
                f"position {i - 1}"
            )
        if token in _APPLY:
            stack.append((token, [], i))
            continue
        if token == END:
            if not stack:
                raise ValueError(f"']' at position {i} closes no operator")
            operator, args, start = stack.pop()
            if not args:
                raise ValueError(
                    f"operator {operator} at position {start} has no arguments "
                    f"(closed by ']' at position {i})"
                )
            value = _APPLY[operator](args)
        elif token in DIGITS:
            value = int(token)
        else:
            raise ValueError(
                f"unknown token {token!r} at position {i}; expected a digit 0-9, one of "
                f"{OPERATORS} or ']'"
            )
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    if stack:
        operator, _, start = stack[-1]
        raise ValueError(
            f"operator {operator} at position {start} is not closed: expected ']' at position "
            f"{len(tokens)}, got the end of the expression"
        )
    if result is None:  # unreachable: a non-empty input either ends an expression or raises
        raise ValueError("expected a ListOps expression, got none")
    return result


def tokenize(text: str) -> list[str]:
    """Split an expression such as ``"[MAX 2 9 [MIN 4 7 ] 0 ]"`` on whitespace into tokens.

    Every token must be a digit, an operator or ``]``; the structure is checked by ``evaluate``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    tokens = text.split()
    if not tokens:
        raise ValueError(f"expected a ListOps expression, got {text!r}")
    for i, token in enumerate(tokens):
        if token not in _TOKEN_ID:
            raise ValueError(
                f"unknown token {token!r} at position {i} in {text[:80]!r}; expected a digit "
                f"0-9, one of {OPERATORS} or ']' separated by spaces"
            )
    return tokens


def _max_tree_length(max_depth: int, max_args: int) -> int:
    length = 1  # a node at max_depth is always a digit
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def _sample(rng: random.Random, max_depth: int, max_args: int, max_length: int) -> list[str] | None:
    """One tree in LRA's distribution, as tokens; None as soon as it must exceed max_length."""
    tokens: list[str] = []
    open_counts: list[int] = []  # arguments still to draw for each open operator
    while True:
        if len(open_counts) + 1 < max_depth and rng.random() <= _OPERATOR_P:
            tokens.append(rng.choice(OPERATORS))
            open_counts.append(rng.randint(2, max_args))
            continue
        tokens.append(DIGITS[rng.randrange(10)])
        while open_counts:  # the digit may complete its operator, and that one its parent...
            open_counts[-1] -= 1
            if open_counts[-1]:
                break
            open_counts.pop()
            tokens.append(END)
        if not open_counts:
            return tokens
        # the rest needs at least one digit per missing argument and one ']' per open operator
        if len(tokens) + sum(open_counts) + len(open_counts) > max_length:
            return None


def generate(
    n: int,
    *,
    max_length: int = 512,
    min_length: int = 1,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    unique: bool = True,
) -> list[tuple[list[str], int]]:
    """``n`` random ListOps expressions with their labels, the same for the same arguments.

    Each has between ``min_length`` and ``max_length`` tokens (inclusive). Trees are drawn as in
    LRA (see the module docstring) and rejected when outside the bounds; a tree is abandoned as
    soon as it must become too long, so rejection stays cheap. With ``unique`` (LRA's behaviour)
    no expression repeats; note that only 10 one-token expressions exist. Raises ``ValueError``
    when the bounds cannot be met, or are met so rarely that ``100_000 + 200 * n`` draws do not
    suffice.
    """
    _check_int("n", n, 0)
    _check_int("min_length", min_length, 1)
    _check_int("max_length", max_length, min_length)
    _check_int("max_depth", max_depth, 1)
    _check_int("max_args", max_args, 2)
    _check_int("seed", seed, 0)
    if not isinstance(unique, bool):
        raise TypeError(f"unique must be a bool, got {type(unique).__name__}")
    longest = _max_tree_length(max_depth, max_args)
    if min_length > longest:
        raise ValueError(
            f"min_length={min_length} is unreachable: with max_depth={max_depth} and "
            f"max_args={max_args} the longest expression has {longest} tokens"
        )
    if min_length > 1 and max_length < 4:
        raise ValueError(
            f"no expression has {min_length}..{max_length} tokens: the shortest with an operator "
            "has 4 ('[MAX 1 2 ]')"
        )
    rng = random.Random(seed)
    examples: list[tuple[list[str], int]] = []
    seen: set[tuple[str, ...]] = set()
    attempts = 100_000 + 200 * n
    for _ in range(attempts):
        if len(examples) == n:
            break
        tokens = _sample(rng, max_depth, max_args, max_length)
        if tokens is None or len(tokens) < min_length:
            continue
        if unique:
            key = tuple(tokens)
            if key in seen:
                continue
            seen.add(key)
        examples.append((tokens, evaluate(tokens)))
    if len(examples) < n:
        raise ValueError(
            f"found only {len(examples)} of n={n} {'distinct ' if unique else ''}expressions with "
            f"{min_length}..{max_length} tokens in {attempts} draws (max_depth={max_depth}, "
            f"max_args={max_args}); widen the length bounds or ask for fewer"
        )
    return examples


def encode(
    examples: Sequence[tuple[Sequence[str], int]], max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and labels for a batch of ``(tokens, label)`` examples.

    Returns ``ids`` (N, T) int64, each row ``CLS_ID`` then the token ids, right-padded with
    ``PAD_ID`` to the longest example (T = 1 + longest <= max_length + 1); ``attention_mask``
    (N, T) bool, True = a real token (CLS included); ``labels`` (N,) int64. An example longer than
    ``max_length`` raises ``ValueError`` rather than being cut, since a cut expression has no value.
    """
    _check_int("max_length", max_length, 1)
    if isinstance(examples, str) or not isinstance(examples, Sequence):
        raise TypeError(
            f"examples must be a list of (tokens, label) pairs, got {type(examples).__name__}"
        )
    if len(examples) == 0:
        raise ValueError("expected at least one example, got none")
    rows: list[list[int]] = []
    labels: list[int] = []
    for i, example in enumerate(examples):
        if not isinstance(example, (tuple, list)) or len(example) != 2:
            raise TypeError(f"example {i} must be a (tokens, label) pair, got {example!r:.80}")
        tokens, label = example
        if isinstance(tokens, str) or not isinstance(tokens, Sequence) or len(tokens) == 0:
            raise ValueError(
                f"example {i}: expected a non-empty list of tokens, got {tokens!r:.80}"
            )
        if len(tokens) > max_length:
            raise ValueError(
                f"example {i} has {len(tokens)} tokens, more than max_length={max_length}"
            )
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
            raise ValueError(f"example {i}: expected an int label 0..9, got {label!r}")
        try:
            rows.append([CLS_ID, *(_TOKEN_ID[token] for token in tokens)])
        except (KeyError, TypeError):
            bad = next(t for t in tokens if not isinstance(t, str) or t not in _TOKEN_ID)
            raise ValueError(
                f"example {i}: unknown token {bad!r} at position {list(tokens).index(bad)}; "
                f"expected a digit 0-9, one of {OPERATORS} or ']'"
            ) from None
        labels.append(label)
    lengths = torch.tensor([len(row) for row in rows])
    attention_mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (N, T)
    ids = torch.full(attention_mask.shape, PAD_ID, dtype=torch.int64)
    ids[attention_mask] = torch.tensor([i for row in rows for i in row], dtype=torch.int64)
    return ids, attention_mask, torch.tensor(labels, dtype=torch.int64)
