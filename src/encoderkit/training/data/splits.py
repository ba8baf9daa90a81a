"""Seeded train / validation / test splits of N rows, for data without classes to stratify by
(lines of text, pairs, sentences, float labels; ``text.split3`` stratifies labelled texts)."""

from __future__ import annotations

import numpy as np


def shuffled_split(
    n: int, n_valid: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) row indices, each sorted (the parts keep the rows' order): a
    permutation seeded by ``seed`` gives its first ``n_valid`` rows to validation, the next
    ``n_test`` to test and the rest to training."""
    if n_valid < 1 or n_test < 1 or n_valid + n_test >= n:
        raise ValueError(
            f"need 1 <= n_valid, 1 <= n_test and n_valid + n_test < n, got {n_valid}, {n_test} "
            f"of {n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    valid, test = order[:n_valid], order[n_valid : n_valid + n_test]
    return np.sort(order[n_valid + n_test :]), np.sort(valid), np.sort(test)
