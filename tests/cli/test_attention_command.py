"""``encoderkit attention``: what each run draws (read back from the matplotlib figure), the line
that says so, --html alone writing no PNG, and options that do not apply refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the pictures are drawn with matplotlib")

from matplotlib.figure import Figure
from tiny import WORD_TEXT, perturb, write_sentence_dir

from encoderkit import TextEncoder
from encoderkit.cli import main
from encoderkit.views import image_plots, plots

TEXT = "a man plays guitar"
TOKENS = ["[CLS]", "a", "man", "plays", "guitar", "[SEP]"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 4-head sentence-transformers directory with a word-level tokenizer."""
    return write_sentence_dir(tmp_path_factory.mktemp("tiny"), perturb(TextEncoder(WORD_TEXT)))


@pytest.fixture
def figures(monkeypatch) -> list[Figure]:
    """Every figure the command writes, kept for the test to read."""
    kept: list[Figure] = []
    save = plots.save_png

    def keep(fig: Figure, out):
        kept.append(fig)
        return save(fig, out)

    monkeypatch.setattr(plots, "save_png", keep)
    monkeypatch.setattr(image_plots, "save_png", keep)  # it imported the name
    return kept


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]


def has_colour_bar(fig: Figure) -> bool:
    return any(getattr(ax, "_colorbar", None) is not None for ax in fig.axes)


def test_one_head_is_labelled_with_its_number(tiny_model, tmp_path, capsys, figures):
    out = tmp_path / "h.png"
    argv = ["attention", TEXT, "--model", str(tiny_model), "--layer", "1", "--head", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}: {tiny_model}, layer 1, head 3 of 4, 6 tokens\n"
    (fig,) = figures
    (ax,) = panels(fig)
    assert ax.get_title() == "H3"  # was "H0": the panel's index, not the head's
    assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
    assert fig._suptitle.get_text() == f"{tiny_model}, layer 1, head 3"
    assert has_colour_bar(fig) and out.stat().st_size > 0


def test_a_layer_and_the_overview_say_what_was_drawn(tiny_model, tmp_path, capsys, figures):
    layer, overview = tmp_path / "l.png", tmp_path / "all.png"
    assert main(["attention", TEXT, "--model", str(tiny_model), "--layer", "0",
                 "--out", str(layer)]) == 0  # fmt: skip
    assert main(["attention", TEXT, "--model", str(tiny_model), "--out", str(overview)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {layer}: {tiny_model}, layer 0, all 4 heads, 6 tokens",
        f"wrote {overview}: {tiny_model}, 2 layers x 4 heads, 6 tokens",
    ]
    assert [ax.get_title() for ax in panels(figures[0])] == ["H0", "H1", "H2", "H3"]
    assert len(panels(figures[1])) == 8 and has_colour_bar(figures[1])
    assert figures[1]._suptitle.get_text().startswith(f"{tiny_model}: 2 layers x 4 heads")
    assert [t.get_text() for t in panels(figures[1])[0].get_yticklabels()] == TOKENS


def test_html_alone_writes_no_png(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["attention", TEXT, "--model", str(tiny_model), "--html", "page.html"]) == 0
    assert capsys.readouterr().out == (
        f"wrote page.html: {tiny_model}, 2 layers x 4 heads, 6 tokens; open it in a browser, "
        "pick a layer and a head, hover a token\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]  # no attention.png
    assert main(["attention", TEXT, "--model", str(tiny_model), "--html", "both.html",
                 "--out", "both.png"]) == 0  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.html", "both.png", "page.html"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--checkpoint", "RUN", "--example", "0", "--html", "x.html"],
         "--html shows a text's tokens; for an image use --out PNG"),
        (["--checkpoint", "RUN", "--example", "0", "--image", "x.png"],
         "--image and --example both choose the image: give one"),
        (["hello", "--checkpoint", "RUN", "--example", "0"],
         "got a text \\('hello'\\) and an image: give the text, or --image/--example"),
        (["--model", "m", "--checkpoint", "RUN", "--example", "0"],
         "--model names a text model; an image run's model is --checkpoint"),
        (["--image", "x.png"], "--image and --example need --checkpoint RUN, a digits run"),
        (["hello", "--model", "m", "--checkpoint", "RUN"],
         "--model and --checkpoint both choose the model: give one"),
        (["hello", "--html", "x.html", "--layer", "1"],
         "--layer and --head choose what the PNG draws, and the --html page holds every layer "
         "and head: add --out PNG for the picture"),
        ([], "give a text to look at"),
    ],
)  # fmt: skip
def test_options_that_do_not_apply_are_refused_by_name(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # refused before any model is loaded or file written
    with pytest.raises(SystemExit, match=f"^encoderkit attention: {message}"):
        main(["attention", *argv])
    assert list(tmp_path.iterdir()) == []


def test_a_digits_run_shows_labels_the_head_asked_for_and_a_colour_bar(tmp_path, capsys, figures):
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's digits")
    run = tmp_path / "run"
    assert main(["train", "--task", "digits", "--out", str(run), "--max-steps", "2",
                 "--n-layers", "2", "--no-progress"]) == 0  # fmt: skip
    from encoderkit.views.maps import image_attention

    seen = image_attention(run, example=5)
    true, guess = seen.classes[seen.label], seen.classes[seen.predicted]
    figures.clear()
    capsys.readouterr()
    out = tmp_path / "digit.png"
    argv = ["attention", "--checkpoint", str(run), "--example", "5", "--head", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"wrote {out}: {run} (digits), layer 1 of 0-1, head 1 and the rollout, test example 5 "
        f"(true {true}, predicted {guess} at {seen.probability:.0%}); mean patch query "
        "attention over 16 patches\n"
    )
    (fig,) = figures
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles[0] == f"true {true}, predicted {guess} ({seen.probability:.0%})"
    assert [t.split(" (")[0] for t in titles[1:]] == ["L1 H1", "rollout L0-L1"]  # 3 panels
    assert has_colour_bar(fig)
    assert "this model mean-pools its patches" in fig.texts[0].get_text().replace("\n", " ")
    with pytest.raises(SystemExit, match="is an image model; use --image FILE or --example N"):
        main(["attention", "hello", "--checkpoint", str(run)])
    with pytest.raises(SystemExit, match=r"--head must lie in \[0, 3\], got 4"):
        main([*argv[:-1], "4"])
