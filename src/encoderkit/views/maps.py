"""Attention maps of a real model on a text or an image, as the ``attention`` and ``heads``
commands draw them: the model comes from the shipped all-MiniLM-L6-v2 (or another
sentence-transformers directory) or from a training run's checkpoint, and the maps from
``record_attention``, so what is drawn is exactly what the model computed.

Shape legend: L layers, H heads, T tokens, N patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from encoderkit.layers.self_attention import record_attention


@dataclass
class TextAttention:
    """One text's tokens and its attention maps, one (H, T, T) tensor per layer."""

    tokens: list[str]
    maps: list[torch.Tensor]
    truncated: bool = False  # the text was longer than the model takes, and was cut


@dataclass
class TextModel:
    """An encoder that maps (ids, mask) to hidden states, and the tokenizer that feeds it."""

    encoder: nn.Module
    tokenize: Any  # str -> (ids, tokens, truncated)
    name: str


def load_text_model(model: str = "all-MiniLM-L6-v2", checkpoint: Path | None = None) -> TextModel:
    """The shipped MiniLM (or a sentence-transformers directory), or a text / ListOps run."""
    if checkpoint is not None:
        return _run_text_model(Path(checkpoint))
    from encoderkit.models.sentence import SentenceEncoder

    sentence = SentenceEncoder.from_pretrained(model)
    tokenizer = sentence.tokenizer

    return TextModel(sentence.model, lambda text: _wordpiece(tokenizer, text), str(model))


def _run_text_model(run: Path) -> TextModel:
    from encoderkit.training.rebuild import load_run_model

    cfg, task = load_run_model(run)
    if cfg.task == "digits":
        raise ValueError(
            f"{run} is an image model; use --image FILE or --example N instead of a text"
        )
    encoder = task.model.encoder
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{run} holds no text encoder")
    if cfg.task == "listops":
        from encoderkit.training.data import listops

        def tokenize_listops(text: str) -> tuple[list[int], list[str], bool]:
            tokens = ["<cls>", *listops.tokenize(text)]
            ids = [listops.VOCAB.index(t) for t in tokens]
            limit = cfg.listops_max_length + 1
            return ids[:limit], tokens[:limit], len(tokens) > limit

        return TextModel(encoder, tokenize_listops, str(run))
    tokenizer = task.objective.tokenizer  # the run's own copy
    return TextModel(encoder, lambda text: _wordpiece(tokenizer, text), str(run))


def _wordpiece(tokenizer: Any, text: str) -> tuple[list[int], list[str], bool]:
    encoding = tokenizer.encode(text.strip())  # truncates at the model's length
    return encoding.ids, encoding.tokens, bool(encoding.overflowing)


@torch.inference_mode()
def text_attention(model: TextModel, text: str) -> TextAttention:
    """Tokenize ``text`` (truncating where the model must) and record every layer's maps."""
    if not text.strip():
        raise ValueError("the text is empty: give a sentence to look at")
    ids, tokens, truncated = model.tokenize(text)
    input_ids = torch.tensor([ids])  # (1, T)
    model.encoder.eval()
    with record_attention(model.encoder) as maps:
        model.encoder(input_ids, torch.ones_like(input_ids, dtype=torch.bool))
    return TextAttention(tokens, [m[0] for m in maps], truncated)


@dataclass
class ImageAttention:
    """One image, its attention maps and what the model made of it."""

    pixels: torch.Tensor  # (1, 8, 8) in [0, 1]
    maps: list[torch.Tensor]  # one (H, 1 + N, 1 + N) map per layer, the class token first
    patch_size: int
    pooling: Literal["cls", "mean"]  # what the classifier reads
    classes: list[str]
    predicted: int  # index into classes
    probability: float  # of the predicted class
    label: int | None = None  # the true class, when known (a test example)


@torch.inference_mode()
def image_attention(
    run: Path, image: Path | None = None, example: int | None = None
) -> ImageAttention:
    """The maps and the prediction of a digits run on an image file or on the run's test
    example number ``example`` (which also gives the true label); one of the two, not both."""
    from encoderkit.models.heads import ImageClassifier
    from encoderkit.training.data.digits import read_digit_image
    from encoderkit.training.rebuild import load_run_model

    if (image is None) == (example is None):
        raise ValueError("give --image FILE or --example N (one of them), got both or neither")
    cfg, task = load_run_model(Path(run), test_split=image is None)  # test images: --example
    if cfg.task != "digits":
        raise ValueError(f"{run} is a {cfg.task} model; --image and --example need a digits run")
    label = None
    if image is not None:
        pixels = read_digit_image(image)
    else:
        n = len(task.test[0])
        if example is None or not 0 <= example < n:
            raise ValueError(f"--example must lie in [0, {n - 1}], got {example}")
        pixels, label = task.test[0][example], int(task.test[1][example])
    model = task.model.eval()
    if not isinstance(model, ImageClassifier):
        raise ValueError(f"{run} holds a {type(model).__name__}, not an image classifier")
    with record_attention(model) as maps:
        logits = model(pixels[None])  # (1, 1, 8, 8) -> (1, classes)
    probabilities = logits[0].float().softmax(dim=-1)
    predicted = int(probabilities.argmax())
    return ImageAttention(
        pixels, [m[0] for m in maps], model.encoder.config.patch_size, model.pooling,
        list(task.classes), predicted, float(probabilities[predicted]), label,
    )  # fmt: skip


def pick_layer(layer: str, n_layers: int) -> int | None:
    """``"all"`` -> None, else a layer index in [0, n_layers) (negative counts from the end)."""
    if layer == "all":
        return None
    try:
        index = int(layer)
    except ValueError:
        raise ValueError(f"--layer must be an integer or 'all', got {layer!r}") from None
    if not -n_layers <= index < n_layers:
        raise ValueError(f"--layer must lie in [0, {n_layers - 1}] (or 'all'), got {index}")
    return index % n_layers


def pick_heads(head: int | None, n_heads: int, layer: int | None) -> slice:
    """The heads of one layer to draw: all of them, or ``head`` alone."""
    if head is None:
        return slice(None)
    if layer is None:
        raise ValueError("--head needs --layer N: one head of one layer")
    if not 0 <= head < n_heads:
        raise ValueError(f"--head must lie in [0, {n_heads - 1}], got {head}")
    return slice(head, head + 1)
