"""``encoderkit attention`` and ``encoderkit heads``: pictures of what each head attends to, an
HTML viewer, and the head report.

``attention`` has two kinds of run: a text (all-MiniLM-L6-v2, another sentence-transformers
directory, or a text / ListOps training run) and an image (``--image`` or ``--example`` of a
digits run). Options that do not apply to the kind asked for are refused by name, before any
model is loaded, rather than silently ignored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_OUT = Path("attention.png")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    attention = commands.add_parser(
        "attention",
        help="draw what each attention head looks at, as PNG or interactive HTML",
        description="Draw what each attention head looks at: in a text (every layer x head, one "
        "layer, or one head), or in a digit image of a digits training run (each head of one "
        "layer, and the rollout over all layers, with the prediction).",
    )
    attention.add_argument(
        "text", nargs="?", help="the sentence (or ListOps expression); not with --image/--example"
    )
    attention.add_argument(
        "--model",
        help=f"{DEFAULT_MODEL} (default) or a sentence-transformers directory",
    )
    attention.add_argument(
        "--checkpoint",
        type=Path,
        metavar="RUN",
        help="a training run instead of --model (text, listops or digits)",
    )
    attention.add_argument(
        "--image", type=Path, help="an image file to look at, with a digits --checkpoint"
    )
    attention.add_argument(
        "--example",
        type=int,
        metavar="N",
        help="test image N of a digits --checkpoint run (its true label is shown)",
    )
    attention.add_argument(
        "--layer",
        default="all",
        help="a layer index, or 'all' (default): every layer x head of a text; for an image, "
        "'all' draws the last layer",
    )
    attention.add_argument(
        "--head",
        type=int,
        help="only this head (of --layer N for a text; of the drawn layer for an image)",
    )
    attention.add_argument(
        "--out",
        type=Path,
        metavar="PNG",
        help=f"the picture to write (default {DEFAULT_OUT}; none when only --html is given)",
    )
    attention.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write an interactive page of every layer and head (texts only; no PNG unless --out)",
    )
    attention.set_defaults(run=run_attention)

    heads = commands.add_parser(
        "heads", help="what every head attends to over built-in sentences (Clark et al. 2019)"
    )
    heads.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="all-MiniLM-L6-v2 or a sentence-transformers directory; default: all-MiniLM-L6-v2",
    )  # fmt: skip
    heads.add_argument(
        "--checkpoint", type=Path, metavar="RUN", help="a training run instead of --model"
    )
    heads.add_argument(
        "--out", type=Path, default=Path("heads.png"), help="the PNG to write; default: heads.png"
    )
    heads.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )
    heads.set_defaults(run=run_heads)


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that do not apply to the run asked for, naming the option and why."""
    if args.image is not None or args.example is not None:
        if args.image is not None and args.example is not None:
            raise ValueError("--image and --example both choose the image: give one")
        if args.checkpoint is None:
            raise ValueError("--image and --example need --checkpoint RUN, a digits run")
        if args.text is not None:
            raise ValueError(
                f"got a text ({args.text!r}) and an image: give the text, or --image/--example"
            )
        if args.model is not None:
            raise ValueError("--model names a text model; an image run's model is --checkpoint")
        if args.html is not None:
            raise ValueError("--html shows a text's tokens; for an image use --out PNG")
        return
    if args.model is not None and args.checkpoint is not None:
        raise ValueError("--model and --checkpoint both choose the model: give one")
    picks = args.layer != "all" or args.head is not None
    if args.html is not None and args.out is None and picks:
        raise ValueError(
            "--layer and --head choose what the PNG draws, and the --html page holds every "
            "layer and head: add --out PNG for the picture"
        )
    if args.text is None:
        raise ValueError("give a text to look at (or --image FILE --checkpoint RUN)")


def run_attention(args: argparse.Namespace) -> int:
    from encoderkit.models.pretrained import PretrainedError
    from encoderkit.training.checkpoint import CheckpointError

    try:
        check_options(args)
        if args.image is not None or args.example is not None:
            return _image_run(args)
        return _text_run(args)
    except (ValueError, FileNotFoundError, CheckpointError, PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit attention: {e}") from e


def _text_run(args: argparse.Namespace) -> int:
    from encoderkit.views import maps as views
    from encoderkit.views import plots as viz
    from encoderkit.views.viewer import write_attention_html

    model = views.load_text_model(args.model or DEFAULT_MODEL, args.checkpoint)
    seen = views.text_attention(model, args.text)
    L, H, T = len(seen.maps), seen.maps[0].shape[0], len(seen.tokens)
    layer = views.pick_layer(args.layer, L)
    heads = views.pick_heads(args.head, H, layer)
    if seen.truncated:
        print(
            f"note: the text is longer than {model.name} takes; only its first {T} tokens are shown"
        )
    out = args.out if args.out is not None or args.html is not None else DEFAULT_OUT
    if out is not None:
        if layer is None:
            out = viz.plot_overview(seen.maps, seen.tokens, out, title=model.name)
            drawn = f"{L} layers x {H} heads"
        else:
            numbers = list(range(H))[heads]
            title = f"{model.name}, layer {layer}" + (
                "" if args.head is None else f", head {args.head}"
            )
            out = viz.plot_heads(
                seen.maps[layer][heads], seen.tokens, out, title=title, head_numbers=numbers
            )
            drawn = f"layer {layer}, " + (
                f"all {H} heads" if args.head is None else f"head {args.head} of {H}"
            )
        print(f"wrote {out}: {model.name}, {drawn}, {T} tokens")
    if args.html is not None:
        page = write_attention_html(args.html, seen.tokens, seen.maps, title=model.name)
        print(
            f"wrote {page}: {model.name}, {L} layers x {H} heads, {T} tokens; open it in a "
            "browser, pick a layer and a head, hover a token"
        )
    return 0


def _image_run(args: argparse.Namespace) -> int:
    from encoderkit.views import maps as views

    seen = views.image_attention(args.checkpoint, args.image, args.example)
    L, H = len(seen.maps), seen.maps[0].shape[0]
    picked = views.pick_layer(args.layer, L)
    layer = L - 1 if picked is None else picked
    heads = list(range(H))[views.pick_heads(args.head, H, layer)]
    label = None if seen.label is None else seen.classes[seen.label]
    guess = seen.classes[seen.predicted]
    from encoderkit.views.image_plots import plot_image_attention

    out = plot_image_attention(
        seen.pixels, seen.maps, seen.patch_size, args.out or DEFAULT_OUT, layer=layer,
        heads=heads, query=seen.pooling, label=label, predicted=f"{guess} ({seen.probability:.0%})",
        title=f"{args.checkpoint} (digits, {L} layers x {H} heads, {seen.pooling} pooling)",
    )  # fmt: skip
    which = f"test example {args.example}" if args.image is None else str(args.image)
    truth = "" if label is None else f"true {label}, "
    drawn = f"head {heads[0]}" if args.head is not None else f"heads 0-{H - 1}"
    whose = "class token" if seen.pooling == "cls" else "mean patch query"
    print(
        f"wrote {out}: {args.checkpoint} (digits), layer {layer} of 0-{L - 1}, {drawn} and the "
        f"rollout, {which} ({truth}predicted {guess} at {seen.probability:.0%}); {whose} "
        f"attention over "
        f"{seen.maps[0].shape[-1] - 1} patches"
    )
    return 0


def run_heads(args: argparse.Namespace) -> int:
    from encoderkit.models.pretrained import PretrainedError
    from encoderkit.training.checkpoint import CheckpointError
    from encoderkit.views import maps as views
    from encoderkit.views.head_report import (
        SENTENCES,
        format_table,
        pattern_report,
        plot_head_map,
        report_records,
    )

    try:
        model = views.load_text_model(args.model, args.checkpoint)
        report = pattern_report([views.text_attention(model, sentence) for sentence in SENTENCES])
    except (ValueError, FileNotFoundError, CheckpointError, PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit heads: {e}") from e
    out = plot_head_map(report, args.out)
    if args.json:
        print(json.dumps({**report_records(report), "figure": str(out)}))
    else:
        print(format_table(report))
        print(f"wrote {out}")
    return 0
