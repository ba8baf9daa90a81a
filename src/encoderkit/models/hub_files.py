"""The files that sit beside a saved model's weights for the tools of the Hugging Face Hub:
``tokenizer.json`` with a ``tokenizer_config.json`` that ``transformers.AutoTokenizer`` reads, and
a short ``README.md`` model card. :func:`~encoderkit.models.pretrained.save_pretrained` writes
them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from encoderkit.models.config import TextConfig
from encoderkit.models.formats.base import TaskKind
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# The first line of the README.md save_pretrained writes: a README.md without it is the user's
CARD_MARK = "<!-- written by encoderkit's save_pretrained -->"
# transformers' names of special tokens, and the tokens that fill each role in BERT-style
# (WordPiece) and RoBERTa-style (BPE) vocabularies, in the order looked for
SPECIAL_TOKENS = {
    "unk_token": ("[UNK]", "<unk>"),
    "sep_token": ("[SEP]", "</s>"),
    "pad_token": ("[PAD]", "<pad>"),
    "cls_token": ("[CLS]", "<s>"),
    "mask_token": ("[MASK]", "<mask>"),
    "bos_token": ("<s>",),
    "eos_token": ("</s>",),
}
AUTO_CLASSES: dict[TaskKind | None, str] = {
    None: "AutoModel",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "masked_lm": "AutoModelForMaskedLM",
    "image_classification": "AutoModelForImageClassification",
}


def tokenizer_json(
    tokenizer: Tokenizer | str | Path, encoder: TextEncoder | VisionEncoder
) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json (file name -> text) for ``tokenizer``, so that
    transformers' AutoTokenizer loads it as a generic fast tokenizer whatever the family (no
    vocab.txt needed), with the model's special tokens and longest input. Checked before
    anything is written: a text model's tokenizer whose ids fit its embedding table."""
    from tokenizers import Tokenizer

    if not isinstance(encoder, TextEncoder):
        raise TypeError(f"tokenizer is for text models, got a {type(encoder).__name__}")
    if isinstance(tokenizer, (str, Path)):
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer))
        except Exception as e:  # tokenizers raises bare Exception for every unreadable file
            raise ValueError(
                f"tokenizer must be a tokenizers.Tokenizer or the path of a tokenizer.json, got "
                f"{str(tokenizer)!r}, which the tokenizers library cannot read ({e})"
            ) from e
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            f"tokenizer must be a tokenizers.Tokenizer or the path of a tokenizer.json, got "
            f"{type(tokenizer).__name__}"
        )
    c = encoder.config
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > c.vocab_size:
        raise ValueError(
            f"tokenizer must have at most the model's vocab_size={c.vocab_size} tokens, got {size}"
        )
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": c.max_positions if c.longest_input is None else c.longest_input,
    }
    # what the model's forward takes: token_type_ids only where it has segment embeddings
    segments = ["token_type_ids"] if c.type_vocab_size else []
    config["model_input_names"] = ["input_ids", *segments, "attention_mask"]
    for role, candidates in SPECIAL_TOKENS.items():
        token = next((t for t in candidates if tokenizer.token_to_id(t) is not None), None)
        if role == "pad_token":  # the model's own padding token, whatever its name
            token = tokenizer.id_to_token(c.pad_token_id) or token
        if token is not None:
            config[role] = token
    return {
        "tokenizer.json": tokenizer.to_str(),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
    }


def model_card(
    model: nn.Module,
    encoder: TextEncoder | VisionEncoder,
    kind: TaskKind | None,
    architecture: str,
    path: str | Path,
    *,
    with_tokenizer: bool,
    with_pooler: bool = True,
) -> str:
    """A short README.md: what the model is (``kind``: its task, None for an encoder), its sizes,
    how to load it with encoderkit and with transformers (``with_pooler=False``: telling
    transformers not to build a pooler)."""
    c = encoder.config
    params = sum(p.numel() for p in model.parameters())
    if isinstance(c, TextConfig):
        inputs = f"vocabulary {c.vocab_size:,} tokens, up to {c.max_positions} positions"
    else:
        inputs = f"{c.image_size}x{c.image_size} images in {c.patch_size}x{c.patch_size} patches"
    labels = getattr(model, "labels", None)
    head: Any = getattr(model, "head", None)
    n = None if kind in (None, "masked_lm") else head.fc.out_features
    classes = "" if n is None else f", {n} classes"
    where = json.dumps(str(path))
    auto = AUTO_CLASSES[kind]
    no_pooler = ", add_pooling_layer=False"  # else transformers adds a random one, with a notice
    lines = [
        CARD_MARK,
        f"# {Path(path).name}",
        "",
        f"A {type(model).__name__} written by encoderkit as transformers' `{architecture}`"
        f"{classes}{': ' + ', '.join(labels) if labels else ''}.",
        "",
        f"{c.n_layers} layers, width {c.d_model}, {c.n_heads} heads, feed-forward {c.d_ff}; "
        f"{inputs}; {params:,} parameters.",
        "",
        "## Load it",
        "",
        "```python",
        f"from encoderkit import {type(model).__name__}",
        "",
        f"model = {type(model).__name__}.from_pretrained({where})",
        "```",
        "",
        "With transformers:",
        "",
        "```python",
        f"from transformers import {auto}{', AutoTokenizer' if with_tokenizer else ''}",
        "",
        f"model = {auto}.from_pretrained({where}{'' if with_pooler else no_pooler})",
        *([f"tokenizer = AutoTokenizer.from_pretrained({where})"] if with_tokenizer else []),
        "```",
        "",
    ]
    return "\n".join(lines)
