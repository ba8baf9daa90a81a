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
from typing import Any

import torch
from torch import nn

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.heads import ImageClassifier, SequenceClassifier
from encoderkit.training.config import TASKS, TrainConfig


@dataclass
class Task:
    """Tensors with the labels last: (images, labels) or (ids, mask, labels). ``valid`` chooses
    the best checkpoint and stops early; ``test`` is only reported."""

    name: str
    train: tuple[torch.Tensor, ...]
    test: tuple[torch.Tensor, ...]
    model: nn.Module
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    valid: tuple[torch.Tensor, ...] = ()

    def tokens(self, inputs: Sequence[torch.Tensor]) -> int:
        """Real tokens in a batch, for tokens/s: patches + class token, or unpadded tokens."""
        if self.name == "digits":
            images = inputs[0]
            return images.shape[0] * (1 + (images.shape[-1] // 2) * (images.shape[-2] // 2))
        return int(inputs[1].sum())


def build_task(cfg: TrainConfig) -> Task:
    """The task's data, then its freshly initialised model (pretrained weights copied in for
    ``--init all-MiniLM-L6-v2``): the data never draws from torch's random state, so the model's
    initial weights depend on the seed alone."""
    check_task(cfg)
    train, valid, test, classes = load_data(cfg)
    if cfg.task == "text" and cfg.init == "all-MiniLM-L6-v2":
        model = _minilm_classifier(cfg, len(classes))
    else:
        model = build_model(cfg, len(classes))
    return Task(cfg.task, train, test, model, classes, valid=valid)


def encoder_sizes(cfg: TrainConfig) -> dict[str, Any]:
    """The EncoderConfig fields a run sets, shared by every task's model."""
    names = ("d_model", "n_heads", "d_ff", "n_layers", "dropout", "attention_dropout", "norm_first")
    return {name: getattr(cfg, name) for name in names}


def check_task(cfg: TrainConfig) -> None:
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {cfg.task!r}")
    if cfg.task == "text" and cfg.init not in ("scratch", "all-MiniLM-L6-v2"):
        raise ValueError(f"init must be 'scratch' or 'all-MiniLM-L6-v2', got {cfg.init!r}")


Tensors = tuple[torch.Tensor, ...]

VALID_FRACTION = 0.1  # of the training examples (digits, listops) or of the file (text)


def load_data(cfg: TrainConfig) -> tuple[Tensors, Tensors, Tensors, list[str]]:
    """(train, validation, test tensors, class names) of the task. Digits and ListOps hold their
    validation split out of the training one, stratified and seeded, so their test splits stay
    what they were; a text file is split three ways (see ``data.text.split3``)."""
    if cfg.task == "digits":
        from encoderkit.training.data.digits import load_digits_split

        split = load_digits_split(seed=cfg.seed)
        train, valid = hold_out((split.train_images, split.train_labels), cfg.seed)
        return train, valid, (split.test_images, split.test_labels), DIGIT_CLASSES
    if cfg.task == "listops":
        train, valid = hold_out(_listops_split(cfg, "train"), cfg.seed)
        return train, valid, _listops_split(cfg, "test"), DIGIT_CLASSES
    data = _read_texts(cfg)
    train, valid, test = _split_texts(cfg, data)
    return train, valid, test, data.classes


def hold_out(tensors: Tensors, seed: int) -> tuple[Tensors, Tensors]:
    """(rest, held out): ``VALID_FRACTION`` of the rows (at least 1), stratified by the labels
    (the last tensor) and the same for the same seed; both keep the rows' order."""
    import math

    from encoderkit.training.data.text import holdout_mask

    n = len(tensors[-1])
    if n < 2:
        raise ValueError(
            f"need at least 2 training examples to hold out a validation split, got {n}"
        )
    n_valid = min(max(math.ceil(round(VALID_FRACTION * n, 9)), 1), n - 1)
    mask = torch.from_numpy(holdout_mask(tensors[-1].numpy(), n_valid, seed))
    return tuple(t[~mask] for t in tensors), tuple(t[mask] for t in tensors)


def load_test_split(cfg: TrainConfig) -> tuple[torch.Tensor, ...]:
    """The test split alone, as ``eval`` needs it: ListOps generates no training examples."""
    check_task(cfg)
    if cfg.task == "listops":
        return _listops_split(cfg, "test")
    if cfg.task == "digits":
        return load_data(cfg)[2]  # 1,797 small images: the split is the cheap part
    return _split_texts(cfg, _read_texts(cfg))[2]


DIGIT_CLASSES = [str(d) for d in range(10)]


def _listops_split(cfg: TrainConfig, which: str) -> tuple[torch.Tensor, ...]:
    from encoderkit.training.data import listops

    n, seed = (
        (cfg.listops_train_size, cfg.seed)
        if which == "train"
        else (cfg.listops_test_size, cfg.seed + 1)
    )
    length = cfg.listops_max_length
    return listops.encode(listops.generate(n, max_length=length, seed=seed), length)


def _read_texts(cfg: TrainConfig) -> Any:
    from encoderkit.training.data.text import read_labelled_texts

    if not cfg.data:
        raise ValueError("the text task needs --data FILE (a .csv or .jsonl with text and label)")
    return read_labelled_texts(Path(cfg.data))


def _split_texts(cfg: TrainConfig, data: Any) -> tuple[Tensors, Tensors, Tensors]:
    from encoderkit.training.data.text import split3

    parts = split3(data, valid_fraction=VALID_FRACTION, seed=cfg.seed)
    tokenizer = text_tokenizer(cfg.text_max_length)
    train, valid, test = (
        (*encode_texts(tokenizer, part.texts), torch.tensor(part.labels)) for part in parts
    )
    return train, valid, test


def model_config(cfg: TrainConfig) -> TextConfig | VisionConfig:
    """The encoder's config for a run, from the run's config alone: no data, no weights read
    (for ``--init all-MiniLM-L6-v2``, the shipped model's config.json and its weights' header)."""
    check_task(cfg)
    if cfg.task == "digits":
        return VisionConfig(
            **encoder_sizes(cfg),
            layer_norm_eps=1e-6,
            image_size=8,
            patch_size=2,
            num_channels=1,
        )
    if cfg.task == "listops":
        from encoderkit.training.data import listops

        return TextConfig(
            **encoder_sizes(cfg),
            vocab_size=len(listops.VOCAB),
            max_positions=cfg.listops_max_length + 1,
            type_vocab_size=0,
            pad_token_id=listops.PAD_ID,
        )
    if cfg.init == "scratch":
        return TextConfig(
            **encoder_sizes(cfg),
            vocab_size=text_tokenizer(cfg.text_max_length).get_vocab_size(),
            max_positions=cfg.text_max_length,
        )
    from safetensors import safe_open

    from encoderkit.models.pretrained import config_from_hf, read_config
    from encoderkit.models.sentence import shipped_model_path

    path = shipped_model_path()
    with safe_open(str(path / "model.safetensors"), "pt") as weights:
        has_pooler = "pooler.dense.weight" in weights.keys()  # a safe_open, not a dict
    config = config_from_hf(read_config(path / "config.json"), has_pooler=has_pooler)
    return _fine_tuning_config(cfg, config)


def _fine_tuning_config(cfg: TrainConfig, config: TextConfig | VisionConfig) -> TextConfig:
    if not isinstance(config, TextConfig):
        raise ValueError("all-MiniLM-L6-v2 should load as a TextEncoder")
    if cfg.text_max_length > config.max_positions:
        raise ValueError(
            f"text_max_length must be at most all-MiniLM-L6-v2's max_positions "
            f"{config.max_positions}, got {cfg.text_max_length}"
        )
    return dataclasses.replace(config, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout)


def build_model(
    cfg: TrainConfig, n_classes: int, config: TextConfig | VisionConfig | None = None
) -> nn.Module:
    """A freshly initialised classifier for the run (``config`` default: :func:`model_config`)."""
    config = model_config(cfg) if config is None else config
    if isinstance(config, VisionConfig):
        return ImageClassifier(config, n_classes, pooling=cfg.pooling)
    return SequenceClassifier(config, n_classes, pooling=cfg.pooling)


def _minilm_classifier(cfg: TrainConfig, n_classes: int) -> nn.Module:
    """all-MiniLM-L6-v2's weights under a new classification head."""
    from encoderkit.models.pretrained import load_pretrained
    from encoderkit.models.sentence import shipped_model_path

    pretrained = load_pretrained(shipped_model_path(), head=False)
    model = SequenceClassifier(
        _fine_tuning_config(cfg, pretrained.config), n_classes, pooling=cfg.pooling
    )
    model.encoder.load_state_dict(pretrained.state_dict())
    return model


def text_tokenizer(max_length: int) -> Any:
    """all-MiniLM-L6-v2's WordPiece tokenizer, truncating at ``max_length`` tokens."""
    from tokenizers import Tokenizer

    from encoderkit.models.sentence import shipped_model_path

    tokenizer = Tokenizer.from_file(str(shipped_model_path() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, T), mask (N, T)) padded to the longest text."""
    from encoderkit.models.sentence import pad_token_ids

    return pad_token_ids([e.ids for e in tokenizer.encode_batch([t.strip() for t in texts])])


def prepare_inputs(cfg: TrainConfig, items: Sequence[str]) -> list[torch.Tensor]:
    """Model inputs for ``encoderkit predict``: image files (digits), ListOps expressions, or
    texts."""
    if cfg.task == "digits":
        from encoderkit.training.data.digits import read_digit_image

        return [torch.stack([read_digit_image(Path(item)) for item in items])]
    if cfg.task == "listops":
        from encoderkit.training.data import listops

        examples = [(listops.tokenize(item), 0) for item in items]
        ids, mask, _ = listops.encode(examples, cfg.listops_max_length)
        return [ids, mask]
    return list(encode_texts(text_tokenizer(cfg.text_max_length), list(items)))
