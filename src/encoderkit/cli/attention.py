"""``encoderkit attention`` and ``encoderkit heads``: pictures of what each head attends to, an
HTML viewer, and the head report."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(commands: argparse._SubParsersAction) -> None:
    attention = commands.add_parser(
        "attention", help="draw what each attention head looks at, as PNG or interactive HTML"
    )
    attention.add_argument("text", nargs="?", help="the sentence (or ListOps expression)")
    attention.add_argument(
        "--model",
        default="all-MiniLM-L6-v2",
        help="all-MiniLM-L6-v2 or a sentence-transformers directory",
    )
    attention.add_argument(
        "--checkpoint",
        type=Path,
        metavar="RUN",
        help="a training run instead of --model (text, listops or digits)",
    )
    attention.add_argument("--image", type=Path, help="an image file, with a digits --checkpoint")
    attention.add_argument(
        "--example", type=int, metavar="N", help="test image number N of a digits --checkpoint run"
    )
    attention.add_argument("--layer", default="all", help="a layer index, or 'all' (default)")
    attention.add_argument("--head", type=int, help="only this head of --layer")
    attention.add_argument("--out", type=Path, default=Path("attention.png"))
    attention.add_argument("--html", type=Path, help="also write an interactive HTML viewer")
    attention.set_defaults(run=run_attention)

    heads = commands.add_parser(
        "heads", help="what every head attends to over built-in sentences (Clark et al. 2019)"
    )
    heads.add_argument("--model", default="all-MiniLM-L6-v2")
    heads.add_argument("--checkpoint", type=Path, metavar="RUN")
    heads.add_argument("--out", type=Path, default=Path("heads.png"))
    heads.set_defaults(run=run_heads)


def run_attention(args: argparse.Namespace) -> int:
    from encoderkit.models.pretrained import PretrainedError
    from encoderkit.training.checkpoint import CheckpointError
    from encoderkit.views import maps as views
    from encoderkit.views import plots as viz
    from encoderkit.views.viewer import write_attention_html

    try:
        if args.image is not None or args.example is not None:
            if args.checkpoint is None:
                raise ValueError("--image and --example need --checkpoint RUN, a digits run")
            pixels, maps, patch = views.image_attention(args.checkpoint, args.image, args.example)
            layer = views.pick_layer(args.layer, len(maps))
            out = viz.plot_image_attention(
                pixels, maps, patch, args.out, layer=-1 if layer is None else layer
            )
            print(f"wrote {out}: class-token attention of each head, and the rollout")
            return 0
        if args.text is None:
            raise ValueError("give a text to look at (or --image FILE --checkpoint RUN)")
        model = views.load_text_model(args.model, args.checkpoint)
        seen = views.text_attention(model, args.text)
        layer = views.pick_layer(args.layer, len(seen.maps))
        heads = views.pick_heads(args.head, seen.maps[0].shape[0], layer)
    except (ValueError, FileNotFoundError, CheckpointError, PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit attention: {e}") from e
    if seen.truncated:
        print(
            f"note: the text is longer than {model.name} takes; only its first "
            f"{len(seen.tokens)} tokens are shown"
        )
    if layer is None:
        out = viz.plot_overview(seen.maps, seen.tokens, args.out)
    else:
        title = f"{model.name}, layer {layer}" + (
            "" if args.head is None else f", head {args.head}"
        )
        out = viz.plot_heads(seen.maps[layer][heads], seen.tokens, args.out, title=title)
    print(
        f"wrote {out} ({len(seen.maps)} layers x {seen.maps[0].shape[0]} heads, "
        f"{len(seen.tokens)} tokens)"
    )
    if args.html is not None:
        page = write_attention_html(args.html, seen.tokens, seen.maps, title=model.name)
        print(f"wrote {page}: pick a layer and a head, hover a token")
    return 0


def run_heads(args: argparse.Namespace) -> int:
    from encoderkit.models.pretrained import PretrainedError
    from encoderkit.training.checkpoint import CheckpointError
    from encoderkit.views import maps as views
    from encoderkit.views.head_report import SENTENCES, format_table, pattern_report, plot_head_map

    try:
        model = views.load_text_model(args.model, args.checkpoint)
        report = pattern_report([views.text_attention(model, sentence) for sentence in SENTENCES])
    except (ValueError, FileNotFoundError, CheckpointError, PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit heads: {e}") from e
    print(format_table(report))
    print(f"wrote {plot_head_map(report, args.out)}")
    return 0
