"""Text pairs for sentence-embedding training: (anchor, positive[, negative]) rows read from CSV or
JSON Lines, split into train, validation and test, or generated as synthetic paraphrases.

The columns are sentence-transformers' (``anchor``, ``positive``, optional ``negative``), the
rows its MultipleNegativesRankingLoss trains on (Henderson et al. 2017, "Efficient Natural
Language Response Suggestion for Smart Reply", section 4.4): each anchor's positive is its
match, every other row's positive and negative a candidate it must rank below.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from encoderkit.training.data.splits import shuffled_split
from encoderkit.training.data.text import jsonl_records, table_file
from encoderkit.utils.files import atomic_write_text

COLUMNS = ("anchor", "positive")  # required; "negative" is optional, for every row or none
NEGATIVE = "negative"
VALID_FRACTION = 0.1
TEST_FRACTION = 0.1
MIN_HELD_OUT = 2  # retrieval among one positive is always right: hold out at least two rows


class Pairs(NamedTuple):
    """Rows of texts: ``anchors[i]`` matches ``positives[i]`` and not ``negatives[i]`` (the hard
    negatives, or None when the data has none)."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str] | None = None

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.anchors)

    def subset(self, index: np.ndarray | list[int]) -> Pairs:
        """The rows ``index``, in that order."""
        pick = [int(i) for i in index]
        negatives = None if self.negatives is None else [self.negatives[i] for i in pick]
        return Pairs([self.anchors[i] for i in pick], [self.positives[i] for i in pick], negatives)


def read_pairs(path: str | os.PathLike[str]) -> Pairs:
    """Read pairs from a ``.csv`` file (header row first) or a ``.jsonl`` file (one JSON object
    per line, blank lines skipped), both UTF-8, with the columns ``anchor`` and ``positive`` and,
    optionally, ``negative`` (other columns are ignored).

    Every error names the file, and the line when one line is at fault: a missing file
    (``FileNotFoundError``), an unsupported extension, missing columns (the ones found are
    listed), a line that is not a JSON object, an empty or non-string text, a negative on some
    rows only, or no rows at all (``ValueError``).
    """
    path = table_file(path, "pairs")
    suffix = path.suffix.lower()
    try:
        rows = _read_csv(path) if suffix == ".csv" else _read_jsonl(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if not rows:
        raise ValueError(f"{path}: no pairs found (the file has no data rows)")
    with_negative = [line for line, row in rows if len(row) == 3]
    if with_negative and len(with_negative) < len(rows):
        first_without = next(line for line, row in rows if len(row) == 2)
        raise ValueError(
            f"{path}, line {first_without}: expected a {NEGATIVE!r} text, as on line "
            f"{with_negative[0]}: give a negative on every row or on none"
        )
    negatives = [row[2] for _, row in rows] if with_negative else None
    return Pairs([row[0] for _, row in rows], [row[1] for _, row in rows], negatives)


def write_pairs(path: str | os.PathLike[str], pairs: Pairs) -> Path:
    """Write ``pairs`` as a CSV file that :func:`read_pairs` reads back, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [*COLUMNS] + ([NEGATIVE] if pairs.negatives is not None else [])
    writer.writerow(header)
    columns = [pairs.anchors, pairs.positives] + (
        [pairs.negatives] if pairs.negatives is not None else []
    )
    writer.writerows(zip(*columns, strict=True))
    return atomic_write_text(path, buffer.getvalue())


def _read_csv(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    rows: list[tuple[int, tuple[str, ...]]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        found = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in found]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing} in the header row (expected anchor, "
                f"positive and optionally negative); found columns {found}"
            )
        has_negative = NEGATIVE in found
        try:
            for record in reader:
                rows.append((reader.line_num, _row(record, has_negative, path, reader.line_num)))
        except csv.Error as e:
            raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from e
    return rows


def _read_jsonl(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    rows: list[tuple[int, tuple[str, ...]]] = []
    for line, record in jsonl_records(path):
        missing = [c for c in COLUMNS if c not in record]
        if missing:
            raise ValueError(
                f"{path}, line {line}: missing column(s) {missing} (expected anchor, "
                f"positive and optionally negative); found columns {list(record)}"
            )
        rows.append((line, _row(record, NEGATIVE in record, path, line)))
    return rows


def _row(record: dict[str, object], has_negative: bool, path: Path, line: int) -> tuple[str, ...]:
    names = (*COLUMNS, NEGATIVE) if has_negative else COLUMNS
    texts = []
    for name in names:
        text = record.get(name)
        if not isinstance(text, str):
            got = "nothing (a short row)" if text is None else type(text).__name__
            raise ValueError(f"{path}, line {line}: expected a string in {name!r}, got {got}")
        if not text.strip():
            raise ValueError(f"{path}, line {line}: empty text in {name!r}")
        texts.append(text)
    return tuple(texts)


def split(
    pairs: Pairs,
    seed: int = 0,
    valid_fraction: float = VALID_FRACTION,
    test_fraction: float = TEST_FRACTION,
) -> tuple[Pairs, Pairs, Pairs]:
    """(train, validation, test): a seeded shuffle (numpy's ``default_rng(seed)``), the same for
    the same arguments. The validation and test parts hold ``ceil(fraction * n)`` rows each, at
    least 2 (retrieval among a single positive would always be right), and the training part
    keeps at least 2 rows (one in-batch negative); each part keeps the file order."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for name, fraction in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(fraction).__name__}")
        if not 0 < fraction < 1:
            raise ValueError(f"{name} must be strictly between 0 and 1, got {fraction}")
    n = len(pairs)
    # rounded first so that float fuzz (0.1 * 30 = 3.0000000000000004) does not add one
    n_valid, n_test = (
        max(math.ceil(round(f * n, 9)), MIN_HELD_OUT) for f in (valid_fraction, test_fraction)
    )
    if n - n_valid - n_test < 2:
        raise ValueError(
            f"need at least {n_valid + n_test + 2} pairs to hold out {n_valid} for validation "
            f"and {n_test} for test and train on 2, got {n}"
        )
    train, valid, test = shuffled_split(n, n_valid, n_test, seed)
    return pairs.subset(train), pairs.subset(valid), pairs.subset(test)


# ---- synthetic paraphrases ----------------------------------------------------------------
# Each topic is a sentence with slots. A slot value has a plain form, for the anchor and its
# hard negative, and a reworded one, for the positive, which shares few words with it (a
# synonym, a description, digits for a number word); the positive also reorders the clauses.
# Rows of one topic differ only in their slot values, so finding a row's positive means
# matching every reworded value, and the hard negative, the anchor with one value changed,
# shares all but that value's words with the anchor.

_TOPICS: list[dict[str, object]] = [
    {
        "anchor": "{who} delivered {count} {item} to {place} on {day}.",
        "positive": [
            "On {day}, {count} {item} were brought to {place} by {who}.",
            "{count} {item} reached {place} on {day}, carried by {who}.",
        ],
        "slots": {
            "who": [("the postman", "the mail carrier"), ("a drone", "an unmanned aircraft"),
                    ("the neighbour", "the person living next door"),
                    ("a cyclist", "someone riding a bike"), ("the courier", "the dispatch rider")],
            "count": [("two", "2"), ("three", "3"), ("five", "5"), ("twelve", "a dozen"),
                      ("seven", "7")],
            "item": [("parcels", "packages"), ("letters", "envelopes"),
                     ("pizzas", "hot Italian pies"), ("flowers", "bouquets"),
                     ("books", "novels")],
            "place": [("the town hall", "the municipal offices"),
                      ("the hospital", "the medical centre"), ("the school", "the classrooms"),
                      ("the station", "the railway terminal"), ("the bakery", "the bread shop")],
            "day": [("Monday", "the first weekday"), ("Friday", "the last working day"),
                    ("Sunday", "the final day of the weekend"),
                    ("Wednesday", "midweek"), ("Saturday", "the first day of the weekend")],
        },
    },
    {
        "anchor": "The chef cooked {dish} with {ingredient} for {guests} in {city}.",
        "positive": [
            "In {city}, {guests} were served {dish} made with {ingredient} by the cook.",
            "For {guests}, a cook in {city} prepared {dish} using {ingredient}.",
        ],
        "slots": {
            "dish": [("soup", "a broth"), ("a curry", "a spicy stew"),
                     ("pasta", "noodles"), ("a cake", "a sponge dessert"),
                     ("a salad", "a bowl of raw greens")],
            "ingredient": [("garlic", "cloves of allium"), ("lemons", "citrus fruit"),
                           ("mushrooms", "fungi"), ("chillies", "hot peppers"),
                           ("cheese", "aged dairy")],
            "guests": [("the wedding party", "the bride and groom's families"),
                       ("twenty students", "a class of 20 pupils"),
                       ("the football team", "the squad of players"),
                       ("hungry tourists", "famished visitors"),
                       ("the night shift", "workers finishing late")],
            "city": [("Paris", "the French capital"), ("Tokyo", "Japan's largest city"),
                     ("Cairo", "the Egyptian capital"), ("Lima", "the capital of Peru"),
                     ("Oslo", "Norway's capital")],
        },
    },
    {
        "anchor": "{team} beat {rival} by {margin} points after {moment}.",
        "positive": [
            "After {moment}, {team} defeated {rival}, winning by {margin}.",
            "{rival} lost by {margin} to {team} following {moment}.",
        ],
        "slots": {
            "team": [("the home side", "the local club"), ("the champions", "last year's winners"),
                     ("the youngsters", "the junior squad"), ("the visitors", "the away team"),
                     ("the underdogs", "the outsiders")],
            "rival": [("their old enemy", "their long-time foes"),
                      ("the league leaders", "the table toppers"),
                      ("a city club", "an urban side"), ("the favourites", "the expected winners"),
                      ("the newcomers", "the recently promoted side")],
            "margin": [("four", "4"), ("ten", "10"), ("two", "2"), ("eleven", "11"),
                       ("six", "6")],
            "moment": [("a late comeback", "a fightback near the end"),
                       ("extra time", "the added period"),
                       ("a slow start", "a sluggish opening"),
                       ("a red card", "a sending-off"), ("the half-time break", "the interval")],
        },
    },
    {
        "anchor": "The {weather} forced {group} to cancel the {event} near {landmark}.",
        "positive": [
            "Near {landmark}, {group} called off the {event} because of {weather}.",
            "Because of {weather}, the {event} by {landmark} was dropped by {group}.",
        ],
        "slots": {
            "weather": [("storm", "a violent gale"), ("heatwave", "scorching temperatures"),
                        ("fog", "thick mist"), ("snow", "heavy snowfall"),
                        ("flooding", "rising water")],
            "group": [("the organisers", "the event staff"), ("the council", "local officials"),
                      ("the club", "the members' association"),
                      ("the school", "the teachers"), ("the band", "the musicians")],
            "event": [("concert", "gig"), ("market", "fair"), ("race", "run"),
                      ("parade", "procession"), ("picnic", "outdoor lunch")],
            "landmark": [("the old bridge", "the historic crossing"),
                         ("the lighthouse", "the coastal beacon"),
                         ("the cathedral", "the big church"),
                         ("the castle", "the medieval fortress"),
                         ("the harbour", "the port")],
        },
    },
    {
        "anchor": "{buyer} paid {price} for {asset} from {seller} in {month}.",
        "positive": [
            "In {month}, {seller} sold {asset} to {buyer} for {price}.",
            "{asset} changed hands in {month}: {seller} got {price} from {buyer}.",
        ],
        "slots": {
            "buyer": [("a bank", "a lender"), ("the investor", "the backer"),
                      ("a startup", "a young company"), ("the city", "the municipality"),
                      ("a collector", "an enthusiast")],
            "price": [("ten million", "10m"), ("half a million", "500,000"),
                      ("two billion", "2bn"), ("eighty thousand", "80,000"),
                      ("three million", "3m")],
            "asset": [("a farm", "farmland"), ("a painting", "an artwork"),
                      ("an office tower", "a skyscraper"), ("a ship", "a vessel"),
                      ("a patent", "intellectual property")],
            "seller": [("a family", "relatives"), ("the founders", "its creators"),
                       ("a museum", "a gallery"), ("the government", "the state"),
                       ("a rival", "a competitor")],
            "month": [("January", "the first month"), ("May", "late spring"),
                      ("August", "high summer"), ("October", "mid-autumn"),
                      ("December", "the last month")],
        },
    },
]  # fmt: skip


def generate_pairs(n: int, seed: int = 0) -> Pairs:
    """``n`` synthetic (anchor, positive, negative) rows, the same for the same arguments, no
    anchor twice (``n`` up to several thousand). Topics (deliveries, cooking, sport, weather,
    sales) take turns in a shuffled order; the positive rewords the anchor's slot values and
    reorders its clauses; the negative is the anchor with one slot value changed (see the
    comment above)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    anchors: list[str] = []
    positives: list[str] = []
    negatives: list[str] = []
    attempts = 0
    while len(anchors) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"n must be at most the distinct rows the topics can make, got {n}")
        topic = _TOPICS[int(rng.integers(len(_TOPICS)))]
        slots: dict[str, list[tuple[str, str]]] = topic["slots"]  # type: ignore[assignment]
        values = {name: int(rng.integers(len(options))) for name, options in slots.items()}
        anchor = _fill(str(topic["anchor"]), slots, values, plain=True)
        if anchor in seen:
            continue
        seen.add(anchor)
        templates: list[str] = topic["positive"]  # type: ignore[assignment]
        template = templates[int(rng.integers(len(templates)))]
        changed = list(slots)[int(rng.integers(len(slots)))]
        other = int(rng.integers(len(slots[changed]) - 1))
        swapped = values | {changed: other + (other >= values[changed])}  # any value but its own
        anchors.append(anchor)
        positives.append(_fill(template, slots, values, plain=False))
        negatives.append(_fill(str(topic["anchor"]), slots, swapped, plain=True))
    return Pairs(anchors, positives, negatives)


def _fill(
    template: str, slots: dict[str, list[tuple[str, str]]], values: dict[str, int], plain: bool
) -> str:
    words = {name: slots[name][i][0 if plain else 1] for name, i in values.items()}
    text = template.format(**words)
    return text[0].upper() + text[1:]
