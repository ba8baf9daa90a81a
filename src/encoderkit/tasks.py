"""The training tasks: each one's data, as tensors, and the model that fits it.

* ``digits``: scikit-learn's 8 x 8 handwritten digits and a small pre-norm ``VisionEncoder``
  with 2 x 2 patches (16 patches and a class token).
* ``listops``: ListOps from the Long Range Arena, generated locally, and a ``TextEncoder``.
* ``text``: the user's CSV / JSONL of texts and labels, tokenized with all-MiniLM-L6-v2's
  tokenizer, fine-tuning its weights or training from scratch.

Shape legend: B batch, T tokens, C classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from encoderkit.config import TextConfig, VisionConfig
from encoderkit.models import ImageClassifier, SequenceClassifier, TextEncoder

if TYPE_CHECKING:
    from encoderkit.train import TrainConfig

TASKS = ("digits", "listops", "text")


@dataclass
class Task:
    """Tensors with the labels last: (images, labels) or (ids, mask, labels)."""

    name: str
    train: tuple[torch.Tensor, ...]
    test: tuple[torch.Tensor, ...]
    model: nn.Module
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def tokens(self, inputs: Sequence[torch.Tensor]) -> int:
        """Real tokens in a batch, for tokens/s: patches + class token, or unpadded tokens."""
        if self.name == "digits":
            images = inputs[0]
            return images.shape[0] * (1 + (images.shape[-1] // 2) * (images.shape[-2] // 2))
        return int(inputs[1].sum())


def build_task(cfg: TrainConfig) -> Task:
    if cfg.task == "digits":
        return _digits(cfg)
    if cfg.task == "listops":
        return _listops(cfg)
    if cfg.task == "text":
        return _text(cfg)
    raise ValueError(f"task must be one of {list(TASKS)}, got {cfg.task!r}")


def encoder_sizes(cfg: TrainConfig) -> dict[str, Any]:
    """The EncoderConfig fields a run sets, shared by every task's model."""
    names = ("d_model", "n_heads", "d_ff", "n_layers", "dropout", "attention_dropout", "norm_first")
    return {name: getattr(cfg, name) for name in names}


def _digits(cfg: TrainConfig) -> Task:
    from encoderkit.data.digits import load_digits_split

    split = load_digits_split(seed=cfg.seed)
    config = VisionConfig(
        **encoder_sizes(cfg),
        layer_norm_eps=1e-6,
        image_size=8,
        patch_size=2,
        num_channels=1,
    )
    return Task(
        "digits",
        (split.train_images, split.train_labels),
        (split.test_images, split.test_labels),
        ImageClassifier(config, 10, pooling=cfg.pooling),
        [str(d) for d in range(10)],
    )


def _listops(cfg: TrainConfig) -> Task:
    from encoderkit.data import listops

    n_train, n_test, length = cfg.listops_train_size, cfg.listops_test_size, cfg.listops_max_length
    train = listops.encode(listops.generate(n_train, max_length=length, seed=cfg.seed), length)
    test = listops.encode(listops.generate(n_test, max_length=length, seed=cfg.seed + 1), length)
    config = TextConfig(
        **encoder_sizes(cfg),
        vocab_size=len(listops.VOCAB),
        max_positions=length + 1,
        type_vocab_size=0,
        pad_token_id=listops.PAD_ID,
    )
    return Task(
        "listops",
        train,
        test,
        SequenceClassifier(config, 10, pooling=cfg.pooling),
        [str(d) for d in range(10)],
    )


def _text(cfg: TrainConfig) -> Task:
    from encoderkit.data.text import read_labelled_texts, split
    from encoderkit.pretrained import load_pretrained
    from encoderkit.sentence import shipped_model_path

    if not cfg.data:
        raise ValueError("the text task needs --data FILE (a .csv or .jsonl with text and label)")
    data = read_labelled_texts(Path(cfg.data))
    train, test = split(data, seed=cfg.seed)
    tokenizer = text_tokenizer(cfg.text_max_length)
    if cfg.init == "all-MiniLM-L6-v2":
        pretrained = load_pretrained(shipped_model_path())
        if not isinstance(pretrained, TextEncoder):
            raise ValueError("all-MiniLM-L6-v2 should load as a TextEncoder")
        if cfg.text_max_length > pretrained.config.max_positions:
            raise ValueError(
                f"text_max_length must be at most all-MiniLM-L6-v2's max_positions "
                f"{pretrained.config.max_positions}, got {cfg.text_max_length}"
            )
        config = dataclasses.replace(
            pretrained.config, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout
        )
        model = SequenceClassifier(config, len(data.classes), pooling=cfg.pooling)
        model.encoder.load_state_dict(pretrained.state_dict())
    elif cfg.init == "scratch":
        config = TextConfig(
            **encoder_sizes(cfg),
            vocab_size=tokenizer.get_vocab_size(),
            max_positions=cfg.text_max_length,
        )
        model = SequenceClassifier(config, len(data.classes), pooling=cfg.pooling)
    else:
        raise ValueError(f"init must be 'scratch' or 'all-MiniLM-L6-v2', got {cfg.init!r}")
    return Task(
        "text",
        (*encode_texts(tokenizer, train.texts), torch.tensor(train.labels)),
        (*encode_texts(tokenizer, test.texts), torch.tensor(test.labels)),
        model,
        data.classes,
    )


def text_tokenizer(max_length: int) -> Any:
    """all-MiniLM-L6-v2's WordPiece tokenizer, truncating at ``max_length`` tokens."""
    from tokenizers import Tokenizer

    from encoderkit.sentence import shipped_model_path

    tokenizer = Tokenizer.from_file(str(shipped_model_path() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, T), mask (N, T)) padded to the longest text."""
    from encoderkit.sentence import pad_token_ids

    return pad_token_ids([e.ids for e in tokenizer.encode_batch([t.strip() for t in texts])])


def prepare_inputs(cfg: TrainConfig, items: Sequence[str]) -> list[torch.Tensor]:
    """Model inputs for ``encoderkit predict``: image files (digits), ListOps expressions, or
    texts."""
    if cfg.task == "digits":
        from encoderkit.data.digits import read_digit_image

        return [torch.stack([read_digit_image(Path(item)) for item in items])]
    if cfg.task == "listops":
        from encoderkit.data import listops

        examples = [(listops.tokenize(item), 0) for item in items]
        ids, mask, _ = listops.encode(examples, cfg.listops_max_length)
        return [ids, mask]
    return list(encode_texts(text_tokenizer(cfg.text_max_length), list(items)))
