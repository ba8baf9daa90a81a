"""The user's own labelled texts: read from CSV or JSON Lines, split into train, validation and
test.

Labels are kept as strings (``str()`` of whatever the file holds, surrounding spaces stripped,
so ``1`` and ``"1"`` are the same class but ``1.0`` is another) and numbered by their sorted
order: ``classes[label]`` is the original label of each text. Sorting is by string, so "10"
comes before "2".
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

SUPPORTED_SUFFIXES = (".csv", ".jsonl")


class LabelledTexts(NamedTuple):
    """Texts with integer labels indexing ``classes``, the sorted distinct label strings."""

    texts: list[str]
    labels: list[int]
    classes: list[str]


def read_labelled_texts(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    min_classes: int = 2,
) -> LabelledTexts:
    """Read texts and labels from a ``.csv`` file (header row first) or a ``.jsonl`` file (one
    JSON object per line, blank lines skipped), both UTF-8.

    Every error names the file, and the line when one line is at fault: a missing file
    (``FileNotFoundError``), an unsupported extension, missing columns (the ones found are
    listed), a line that is not a JSON object, a missing text, an empty or missing label, no rows
    at all, or fewer than ``min_classes`` distinct labels (``ValueError``; a file to evaluate
    may hold one class, a file to train on needs two).
    """
    path, rows = _read_rows(path, text_column, label_column)
    classes = sorted({label for _, label in rows})
    if len(classes) < min_classes:
        raise ValueError(
            f"{path}: a classifier needs at least {min_classes} distinct labels in "
            f"{label_column!r}, found only {classes[0]!r} ({len(rows)} rows)"
        )
    index = {name: i for i, name in enumerate(classes)}
    return LabelledTexts([t for t, _ in rows], [index[label] for _, label in rows], classes)


def read_values(
    path: str | os.PathLike[str], text_column: str = "text", label_column: str = "label"
) -> tuple[list[str], list[float]]:
    """Texts and float labels (regression), from the same files as :func:`read_labelled_texts`;
    a label that is not a finite number is an error naming its line."""
    path, rows = _read_rows(path, text_column, label_column)
    values = []
    for number, (_, label) in enumerate(rows, start=1):
        try:
            value = float(label)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(
                f"{path}, row {number}: expected a finite number in {label_column!r} for "
                f"regression, got {label!r}"
            )
        values.append(value)
    return [t for t, _ in rows], values


def _read_rows(
    path: str | os.PathLike[str], text_column: str, label_column: str
) -> tuple[Path, list[tuple[str, str]]]:
    for name, column in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(column, str) or not column:
            raise TypeError(f"{name} must be a non-empty str, got {column!r}")
    path = table_file(path, "labelled-text")
    reader = _read_csv if path.suffix.lower() == ".csv" else _read_jsonl
    try:
        rows = reader(path, text_column, label_column)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if not rows:
        raise ValueError(f"{path}: no labelled texts found (the file has no data rows)")
    return path, rows


def table_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path, once it is known to be a .csv or .jsonl file (``what`` names it in
    the errors: a missing file, a directory, another extension)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} file at {path}")
    if not path.is_file():
        raise ValueError(f"expected a file at {path}, found a directory or other non-file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    return path


def _read_csv(path: Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        found = reader.fieldnames or []
        missing = [c for c in (text_column, label_column) if c not in found]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing} in the header row; found columns {found}"
            )
        try:
            for record in reader:
                line = reader.line_num
                rows.append(_row(record, text_column, label_column, path, line))
        except csv.Error as e:
            raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from e
    return rows


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON Lines file (UTF-8, a leading
    byte-order mark dropped); a line that is not valid JSON, or not an object, is an error
    naming the file and the line."""
    with open(path, encoding="utf-8-sig") as f:
        for line, content in enumerate(f, start=1):
            if not content.strip():
                continue
            try:
                record = json.loads(content)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {line}: not valid JSON ({e})") from e
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}, line {line}: expected a JSON object, got {type(record).__name__}"
                )
            yield line, record


def _read_jsonl(path: Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for line, record in jsonl_records(path):
        missing = [c for c in (text_column, label_column) if c not in record]
        if missing:
            raise ValueError(
                f"{path}, line {line}: missing column(s) {missing}; found columns {list(record)}"
            )
        rows.append(_row(record, text_column, label_column, path, line))
    return rows


def _row(
    record: dict[str, object], text_column: str, label_column: str, path: Path, line: int
) -> tuple[str, str]:
    text, label = record.get(text_column), record.get(label_column)
    if not isinstance(text, str):
        got = "nothing (a short row)" if text is None else type(text).__name__
        raise ValueError(f"{path}, line {line}: expected a string in {text_column!r}, got {got}")
    if isinstance(label, (dict, list)):
        raise ValueError(
            f"{path}, line {line}: expected a label in {label_column!r}, got a "
            f"{type(label).__name__}"
        )
    label_text = "" if label is None else str(label).strip()
    if not label_text:
        raise ValueError(f"{path}, line {line}: empty or missing label in {label_column!r}")
    return text, label_text


def split(
    data: LabelledTexts, test_fraction: float = 0.2, seed: int = 0
) -> tuple[LabelledTexts, LabelledTexts]:
    """Split into (train, test), the same for the same arguments, both non-empty.

    The test part has ``ceil(test_fraction * n)`` examples (kept within 1..n-1). When every class
    has at least 2 examples the split is stratified: each class gives the test part its share up
    to rounding, with at least one example in each part whenever both parts have room for every
    class; otherwise it is a plain seeded shuffle. Each part keeps the file order and the full
    ``classes`` list.
    """
    if not isinstance(data, LabelledTexts):
        raise TypeError(f"data must be LabelledTexts, got {type(data).__name__}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"test_fraction must be a float, got {type(test_fraction).__name__}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    n = len(data.texts)
    if len(data.labels) != n:
        raise ValueError(f"data has {n} texts but {len(data.labels)} labels")
    if any(
        isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < len(data.classes)
        for y in data.labels
    ):
        raise ValueError(f"data.labels must be ints indexing the {len(data.classes)} classes")
    if n < 2:
        raise ValueError(f"need at least 2 examples to make a train and a test part, got {n}")
    # rounded first so that float fuzz (0.3 * 10 = 3.0000000000000004) does not add one
    n_test = min(max(math.ceil(round(test_fraction * n, 9)), 1), n - 1)
    in_test = holdout_mask(np.asarray(data.labels, dtype=np.int64), n_test, seed)
    return _subset(data, np.flatnonzero(~in_test)), _subset(data, np.flatnonzero(in_test))


def split3(
    data: LabelledTexts, valid_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[LabelledTexts, LabelledTexts, LabelledTexts]:
    """Split into (train, validation, test), each non-empty and stratified as :func:`split` is.

    The test part is ``split(data, test_fraction, seed)``'s, so runs made before the validation
    split existed keep their test split; the validation part, ``valid_fraction`` of all the
    examples, is then held out of the rest with the seed ``seed + 1``.
    """
    if isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float)):
        raise TypeError(f"valid_fraction must be a float, got {type(valid_fraction).__name__}")
    if not 0 < valid_fraction < 1 - test_fraction:
        raise ValueError(
            f"valid_fraction must be between 0 and 1 - test_fraction ({1 - test_fraction:g}), "
            f"got {valid_fraction}"
        )
    rest, test = split(data, test_fraction, seed)
    if len(rest.texts) < 2:
        raise ValueError(
            f"need at least 3 examples to make a train, a validation and a test part, got "
            f"{len(data.texts)}"
        )
    train, valid = split(rest, valid_fraction / (1 - test_fraction), seed + 1)
    return train, valid, test


def holdout_mask(labels: np.ndarray, n_out: int, seed: int) -> np.ndarray:
    """A boolean mask of ``n_out`` examples to hold out of ``labels`` (N,), the same for the same
    arguments: stratified (each class gives its share up to rounding, see :func:`_allocate`)
    when every class present has at least 2 examples, else a plain seeded shuffle."""
    n = len(labels)
    if not 0 < n_out < n:
        raise ValueError(f"n_out must be between 1 and {n - 1} (one less than N), got {n_out}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    if counts[present].min() >= 2:
        per_class = _allocate(counts[present], n_out)
        held = np.concatenate(
            [
                rng.permutation(np.flatnonzero(labels == c))[:k]
                for c, k in zip(present, per_class, strict=True)
            ]
        )
    else:
        held = rng.permutation(n)[:n_out]
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return mask


def _allocate(counts: np.ndarray, n_test: int) -> list[int]:
    """Test examples per class: as close to proportional as possible, summing to ``n_test``,
    at least 1 per class when n_test allows it and at least 1 left to train when it allows."""
    n, k = int(counts.sum()), len(counts)
    ideal = counts * n_test / n
    low = np.full(k, 1 if n_test >= k else 0)
    high = counts - (1 if n - n_test >= k else 0)
    take = np.clip(np.floor(ideal).astype(np.int64), low, high)
    while take.sum() < n_test:  # give to the class furthest below its share (first on ties)
        room = np.where(take < high, ideal - take, -np.inf)
        take[int(np.argmax(room))] += 1
    while take.sum() > n_test:  # take from the class furthest above its share
        excess = np.where(take > low, take - ideal, -np.inf)
        take[int(np.argmax(excess))] -= 1
    return [int(t) for t in take]


def _subset(data: LabelledTexts, index: np.ndarray) -> LabelledTexts:
    return LabelledTexts(
        [data.texts[i] for i in index], [data.labels[i] for i in index], list(data.classes)
    )


def read_texts(path: str | os.PathLike[str], text_column: str = "text") -> list[str]:
    """The ``text_column`` of a .csv or .jsonl file (other columns ignored), for prediction."""
    path = table_file(path, "text")
    records: Iterable[tuple[int, dict[str, Any]]]
    texts: list[str] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix.lower() == ".csv":
            records = ((i, row) for i, row in enumerate(csv.DictReader(f), start=2))
        else:
            records = jsonl_records(path)
        try:
            for line, record in records:
                text = record.get(text_column)
                if not isinstance(text, str):
                    raise ValueError(
                        f"{path}, line {line}: expected a string in {text_column!r}, got "
                        f"{type(text).__name__}"
                    )
                texts.append(text)
        except (csv.Error, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable {path.suffix} file ({e})") from e
    return texts
