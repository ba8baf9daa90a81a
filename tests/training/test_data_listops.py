"""ListOps: the evaluator against hand-worked cases and an independent recursive evaluator built on
numpy (with LRA's ``int(np.median(...))``), the generator's bounds and determinism, the encoding."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from encoderkit.training.data import evaluate
from encoderkit.training.data.listops import (
    CLS_ID,
    OPERATORS,
    PAD_ID,
    VOCAB,
    encode,
    generate,
    tokenize,
)

# LRA's to_value, written recursively on a tree: ("[OP", [children]) or a digit.
REFERENCE = {
    "[MAX": lambda a: int(np.max(a)),
    "[MIN": lambda a: int(np.min(a)),
    "[MED": lambda a: int(np.median(a)),
    "[SM": lambda a: int(np.sum(a) % 10),
}


def reference_value(tree):
    if isinstance(tree, int):
        return tree
    op, children = tree
    return REFERENCE[op]([reference_value(c) for c in children])


def to_tokens(tree):
    if isinstance(tree, int):
        return [str(tree)]
    op, children = tree
    return [op, *(t for c in children for t in to_tokens(c)), "]"]


def parse(tokens, pos=0):
    """Recursive descent back to a tree; returns (tree, next position)."""
    token = tokens[pos]
    if token in OPERATORS:
        children, pos = [], pos + 1
        while tokens[pos] != "]":
            child, pos = parse(tokens, pos)
            children.append(child)
        return (token, children), pos + 1
    return int(token), pos + 1


def tree_depth(tree):
    """Operator nesting: a digit is 0, [OP digits ] is 1."""
    if isinstance(tree, int):
        return 0
    return 1 + max(tree_depth(c) for c in tree[1])


def all_arg_counts(tree):
    if isinstance(tree, int):
        return []
    return [len(tree[1])] + [n for c in tree[1] for n in all_arg_counts(c)]


trees = st.recursive(
    st.integers(0, 9),
    lambda children: st.tuples(
        st.sampled_from(OPERATORS), st.lists(children, min_size=1, max_size=6)
    ),
    max_leaves=60,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7", 7),
        ("[MAX 2 9 4 ]", 9),
        ("[MIN 8 3 5 ]", 3),
        ("[SM 9 8 7 ]", 4),  # 24 mod 10
        ("[SM 5 5 ]", 0),
        ("[MED 3 9 1 ]", 3),  # odd count: the middle element
        ("[MED 1 4 ]", 2),  # even: int(np.median) = int(2.5) = 2, not the lower middle 1
        ("[MED 1 9 ]", 5),  # int(5.0); the lower middle element would be 1
        ("[MED 3 4 5 8 ]", 4),  # int(4.5)
        ("[MED 0 0 9 9 ]", 4),  # int(4.5)
        ("[MAX 5 ]", 5),  # a single argument is allowed
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 5 [MAX 1 [SM 3 4 ] ] 6 ]", 5),  # SM=7, MAX=7, MIN(5, 7, 6)=5
        ("[SM [MED 2 6 ] [MAX 8 9 ] ]", 3),  # 4 + 9 = 13 -> 3
        ("[MED [MIN 7 9 ] [SM 5 6 ] [MAX 0 2 ] [MED 8 ] ]", 4),  # 7 1 2 8 -> int(4.5)
    ],
)
def test_hand_worked_values(text, value):
    assert evaluate(tokenize(text)) == value


@given(st.lists(st.integers(0, 9), min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_med_is_lra_int_of_numpy_median(args):
    assert evaluate(["[MED", *map(str, args), "]"]) == int(np.median(args))


@given(trees)
@settings(max_examples=100, deadline=None)
def test_evaluate_matches_a_recursive_numpy_evaluator(tree):
    tokens = to_tokens(tree)
    assert evaluate(tokens) == reference_value(tree)
    assert parse(tokens) == (tree, len(tokens))  # the test's own parser, checked here


def test_deep_nesting_needs_no_recursion():
    depth = 5000  # far past Python's default recursion limit of 1000
    tokens = ["[SM", "1"] * depth + ["1"] + ["]"] * depth
    assert evaluate(tokens) == (depth + 1) % 10
    assert evaluate(["[MAX"] * depth + ["3"] + ["]"] * depth) == 3


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([], "got no tokens"),
        (["[MAX", "1", "2"], r"\[MAX at position 0 is not closed: expected '\]' at position 3"),
        (["[MAX", "1", "[MIN", "2", "]"], r"\[MAX at position 0 is not closed"),
        (["]"], r"'\]' at position 0 closes no operator"),
        (["1", "2"], "unexpected token '2' at position 1"),
        (["[MAX", "1", "]", "]"], r"unexpected token '\]' at position 3"),
        (["[MAX", "]"], r"\[MAX at position 0 has no arguments \(closed by '\]' at position 1\)"),
        (["[MAX", "12", "]"], "unknown token '12' at position 1"),
        (["[MAX", "<pad>", "]"], "unknown token '<pad>' at position 1"),
        (["[FIRST", "1", "]"], "unknown token '\\[FIRST' at position 0"),
    ],
)
def test_malformed_expressions_name_the_position(tokens, message):
    with pytest.raises(ValueError, match=message):
        evaluate(tokens)


def test_evaluate_rejects_non_token_lists():
    with pytest.raises(TypeError, match="list of str"):
        evaluate("[MAX 1 2 ]")
    with pytest.raises(TypeError, match="position 1 must be a str, got int"):
        evaluate(["[MAX", 1, "]"])


def test_tokenize():
    assert tokenize(" [MAX 2 9\n[MIN 4 7 ]\t0 ] ") == [
        "[MAX",
        "2",
        "9",
        "[MIN",
        "4",
        "7",
        "]",
        "0",
        "]",
    ]
    with pytest.raises(ValueError, match=r"unknown token '\(' at position 0"):
        tokenize("( [MAX 1 2 ] )")
    with pytest.raises(ValueError, match="unknown token '<cls>' at position 0"):
        tokenize("<cls> 1")
    with pytest.raises(ValueError, match="unknown token '12' at position 2"):
        tokenize("[MAX 1 12 ]")
    with pytest.raises(ValueError, match="expected a ListOps expression"):
        tokenize("   ")
    with pytest.raises(TypeError, match="must be a str"):
        tokenize(["1"])


def test_vocab():
    assert VOCAB == ["<pad>", "<cls>", *"0123456789", "[MAX", "[MIN", "[MED", "[SM", "]"]
    assert VOCAB[PAD_ID] == "<pad>" and VOCAB[CLS_ID] == "<cls>"
    assert OPERATORS == ["[MAX", "[MIN", "[MED", "[SM"]


@pytest.fixture(scope="module")
def examples():
    return generate(2000, max_length=512)


def test_generated_examples_are_valid_and_labelled_right(examples):
    assert len(examples) == 2000
    assert len({tuple(t) for t, _ in examples}) == 2000  # unique by default, as in LRA
    for tokens, label in examples:
        assert 1 <= len(tokens) <= 512
        tree, end = parse(tokens)
        assert end == len(tokens)
        assert label == reference_value(tree)
        assert tree_depth(tree) <= 9  # max_depth=10 counts the digits' level, as in LRA
        assert all(2 <= n <= 10 for n in all_arg_counts(tree))


def test_label_distribution_covers_every_class(examples):
    counts = collections.Counter(label for _, label in examples)
    assert set(counts) == set(range(10))
    # MIN and MAX pull towards 0 and 9, but no class dominates: the majority baseline is low
    assert max(counts.values()) / len(examples) < 0.2


def test_generate_is_deterministic_and_seeded(examples):
    # same seed, same data; generation is sequential, so a shorter run is a prefix of a longer one
    assert generate(300, max_length=512) == examples[:300]
    other = generate(50, max_length=512, seed=1)
    assert other != examples[:50]
    assert generate(50, max_length=512, seed=1) == other


@pytest.mark.parametrize(
    ("kwargs", "max_nesting"),
    [
        ({"min_length": 20, "max_length": 40}, 9),
        ({"min_length": 4, "max_length": 4}, 1),
        ({"min_length": 500, "max_length": 2000}, 9),  # LRA's setting (its bounds are strict)
        ({"min_length": 10, "max_length": 200, "max_depth": 3, "max_args": 4}, 2),
        ({"max_length": 1, "unique": False}, 0),
    ],
)
def test_generated_lengths_stay_in_bounds(kwargs, max_nesting):
    n = 40
    examples = generate(n, **kwargs)
    assert len(examples) == n
    low, high = kwargs.get("min_length", 1), kwargs["max_length"]
    max_args = kwargs.get("max_args", 10)
    for tokens, label in examples:
        assert low <= len(tokens) <= high
        tree, _ = parse(tokens)
        assert tree_depth(tree) <= max_nesting
        assert all(n <= max_args for n in all_arg_counts(tree))
        assert label == evaluate(tokens)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n": -1}, ValueError, "n must be >= 0, got -1"),
        ({"n": 2.0}, TypeError, "n must be an int, got float"),
        ({"n": 1, "min_length": 0}, ValueError, "min_length must be >= 1"),
        ({"n": 1, "min_length": 10, "max_length": 5}, ValueError, "max_length must be >= 10"),
        ({"n": 1, "max_args": 1}, ValueError, "max_args must be >= 2"),
        ({"n": 1, "seed": True}, TypeError, "seed must be an int, got bool"),
        ({"n": 1, "min_length": 2, "max_length": 3}, ValueError, "the shortest with an operator"),
        (
            {"n": 1, "min_length": 200, "max_length": 300, "max_depth": 3, "max_args": 4},
            ValueError,
            "min_length=200 is unreachable: .* the longest expression has 26 tokens",
        ),
        ({"n": 11, "max_length": 1}, ValueError, "found only 10 of n=11 distinct expressions"),
    ],
)
def test_generate_rejects_impossible_requests(kwargs, error, message):
    n = kwargs.pop("n")
    with pytest.raises(error, match=message):
        generate(n, **kwargs)


def test_generate_nothing():
    assert generate(0) == []


def test_encode_layout():
    examples = [(["7"], 7), (tokenize("[MAX 2 9 [MIN 4 7 ] 0 ]"), 9), (tokenize("[SM 1 2 ]"), 3)]
    ids, mask, labels = encode(examples, max_length=9)
    assert ids.shape == mask.shape == (3, 10)  # CLS + the longest (9 tokens)
    assert ids.dtype == labels.dtype == torch.int64 and mask.dtype == torch.bool
    assert labels.tolist() == [7, 9, 3]
    assert (ids[:, 0] == CLS_ID).all()
    for row, mask_row, (tokens, _) in zip(ids, mask, examples, strict=True):
        n = len(tokens) + 1
        assert [VOCAB[i] for i in row[1:n].tolist()] == tokens
        assert (row[n:] == PAD_ID).all()
        assert mask_row.tolist() == [True] * n + [False] * (10 - n)


def test_encode_a_generated_batch(examples):
    ids, mask, labels = encode(examples, max_length=512)
    longest = max(len(t) for t, _ in examples)
    assert ids.shape == (2000, longest + 1) and longest + 1 <= 513
    assert mask.sum(dim=1).tolist() == [len(t) + 1 for t, _ in examples]
    assert ((ids == PAD_ID) == ~mask).all()  # padding exactly where the mask is False
    assert labels.tolist() == [label for _, label in examples]


@pytest.mark.parametrize(
    ("examples", "error", "message"),
    [
        ([], ValueError, "at least one example"),
        ([(["[MAX", "1", "2", "]"], 2)], ValueError, "example 0 has 4 tokens, more than max"),
        ([(["1"], 1), (["[MAX", "x", "]"], 1)], ValueError, "example 1: unknown token 'x' at pos"),
        ([(["<pad>"], 1)], ValueError, "unknown token '<pad>' at position 0"),
        ([(["1"], 10)], ValueError, "expected an int label 0..9, got 10"),
        ([(["1"], "1")], ValueError, "expected an int label 0..9, got '1'"),
        ([([], 1)], ValueError, "non-empty list of tokens"),
        ([("1", 1)], ValueError, "non-empty list of tokens"),
        ([(["1"],)], TypeError, r"example 0 must be a \(tokens, label\) pair"),
        ("1", TypeError, "list of"),
    ],
)
def test_encode_errors(examples, error, message):
    with pytest.raises(error, match=message):
        encode(examples, max_length=3)
