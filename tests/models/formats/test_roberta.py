"""What RoBERTa and XLM-RoBERTa add to BERT's layout: positions from pad_token_id + 1 (right and
left padding), saving a model whose positions start there as RoBERTa by default, the RoBERTa
classifier head, and config.json fields refused with the field named."""

from __future__ import annotations

import logging

import pytest
import torch
from models.formats.helpers import (
    TEXT_SIZE,
    edit_config,
    loads_cleanly,
    padded_ids,
    perturbed,
    read_config,
    saved_reference,
)

from encoderkit import PretrainedError, TextConfig, TextEncoder, load_pretrained, save_pretrained
from encoderkit.models.heads import HeadConfig, MaskedLM, SequenceClassifier
from encoderkit.models.pretrained import config_to_hf

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
SIZE = TEXT_SIZE | dict(type_vocab_size=1, layer_norm_eps=1e-5)
PAD = 1  # RoBERTa's


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """A RobertaModel saved by transformers, and that model."""
    directory = tmp_path_factory.mktemp("roberta")
    config = transformers.RobertaConfig(**SIZE)
    return directory, saved_reference(transformers.RobertaModel, config, directory)


@pytest.fixture
def roberta_dir(roberta, tmp_path):
    """A copy of the RobertaModel directory, for a test to edit."""
    for f in roberta[0].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def ids_of(lengths, T, left=False, vocab=99):
    """Ids from 3 on (past <s>, <pad> and </s>), padded with RoBERTa's pad id."""
    return padded_ids(lengths, T, low=3, vocab=vocab, pad=PAD, seed=3, left=left)


def test_positions_start_after_the_padding_index(roberta):
    directory, theirs = roberta
    ours = load_pretrained(directory)
    c = ours.config
    assert (c.position_offset, c.max_positions, c.pad_token_id) == (PAD + 1, 24, PAD)
    assert c.type_vocab_size == 1 and c.layer_norm_eps == 1e-5
    ids, mask = ids_of([22, 15, 1], 22)  # the longest input: 24 rows less the offset 2
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        out = ours(ids, mask)
    torch.testing.assert_close(out[mask], ref[mask], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="more than the model's max_positions 24 less its"):
        ours(*ids_of([23], 23))


def test_left_padding_numbers_positions_by_place_not_by_count(roberta):
    """Ours: token t reads row t + 2 whatever precedes it. Hugging Face counts the non-pad
    tokens, so a left-padded row reads rows 2, 3, ... from its first real token: the two agree
    when Hugging Face is given our positions."""
    directory, theirs = roberta
    ours = load_pretrained(directory)
    ids, mask = ids_of([9, 5], 9, left=True)
    by_place = (torch.arange(9) + PAD + 1).expand(2, 9)
    with torch.no_grad():
        out = ours(ids, mask)
        ref = theirs(input_ids=ids, attention_mask=mask.long(), position_ids=by_place)
        by_count = theirs(input_ids=ids, attention_mask=mask.long())
    torch.testing.assert_close(out[mask], ref.last_hidden_state[mask], atol=ATOL, rtol=0)
    padded = mask[1]
    difference = (out[1][padded] - by_count.last_hidden_state[1][padded]).abs().max()
    assert difference > 0.1  # the left-padded row differs from Hugging Face's default
    torch.testing.assert_close(out[0], by_count.last_hidden_state[0], atol=ATOL, rtol=0)


def tiny_text(**changes):
    torch.manual_seed(0)
    config = TextConfig(
        d_model=32, n_heads=4, d_ff=48, n_layers=2, vocab_size=60, max_positions=18,
        layer_norm_eps=1e-5, **changes,
    )  # fmt: skip
    return perturbed(TextEncoder(config))


def test_a_model_whose_positions_start_after_the_pad_is_saved_as_roberta(tmp_path):
    ours = tiny_text(pad_token_id=PAD, position_offset=PAD + 1, type_vocab_size=1, pooler=True)
    save_pretrained(ours, tmp_path / "default")
    save_pretrained(ours, tmp_path / "xlm", model_type="xlm-roberta")
    ids, mask = ids_of([16, 9, 3], 16, vocab=60)
    with torch.no_grad():
        out = ours(ids, mask)
    for name, cls, model_type in (
        ("default", transformers.RobertaModel, "roberta"),
        ("xlm", transformers.XLMRobertaModel, "xlm-roberta"),
    ):
        written = read_config(tmp_path / name)
        assert written["model_type"] == model_type
        assert written["max_position_embeddings"] == 18 and written["pad_token_id"] == PAD
        theirs = loads_cleanly(cls, tmp_path / name)
        with torch.no_grad():
            ref = theirs(input_ids=ids, attention_mask=mask.long())
        torch.testing.assert_close(out[mask], ref.last_hidden_state[mask], atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.pool(out), ref.pooler_output, atol=ATOL, rtol=0)
    assert config_to_hf(ours.config)["model_type"] == "roberta"
    assert config_to_hf(tiny_text().config)["model_type"] == "bert"  # a plain one stays BERT


def test_saving_as_a_family_that_cannot_express_the_model_says_why(tmp_path):
    plain = tiny_text()
    with pytest.raises(ValueError) as info:
        save_pretrained(plain, tmp_path, model_type="roberta")
    assert str(info.value) == (
        "this model cannot be written in the RoBERTa format: position_offset must be "
        "pad_token_id + 1 = 1 (got 0)"
    )
    with pytest.raises(ValueError, match=r"model_type must be one of \['bert', 'roberta', "):
        save_pretrained(plain, tmp_path, model_type="vit")
    shifted = tiny_text(position_offset=3, pad_token_id=PAD)  # neither BERT's 0 nor pad + 1
    with pytest.raises(ValueError) as info:
        save_pretrained(shifted, tmp_path)
    message = str(info.value)
    assert message.startswith("no family can write this model:\n")
    assert "the BERT format: position_offset must be 0 (got 3)" in message
    assert "the RoBERTa format: position_offset must be pad_token_id + 1 = 2 (got 3)" in message
    assert not any(tmp_path.iterdir())


def test_the_classifier_head_is_roberta_s(tmp_path):
    """dense + tanh on <s>, no pooler: a BERT-style head (the pooler's, or none) is refused."""
    config = TextConfig(
        d_model=32, n_heads=4, d_ff=48, n_layers=2, vocab_size=60, max_positions=18,
        pad_token_id=PAD, position_offset=PAD + 1, type_vocab_size=1,
    )  # fmt: skip
    head = HeadConfig(dense=True, activation="tanh", input_dropout=True)
    ours = perturbed(SequenceClassifier(config, 4, head=head, problem_type="regression"))
    save_pretrained(ours, tmp_path)
    theirs = transformers.RobertaForSequenceClassification.from_pretrained(tmp_path).eval()
    assert theirs.config.problem_type == "regression" and theirs.config.num_labels == 4
    ids, mask = ids_of([16, 9, 3], 16, vocab=60)
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask.long()).logits
        torch.testing.assert_close(ours(ids, mask), ref, atol=ATOL, rtol=0)
    back = load_pretrained(tmp_path)
    assert back.problem_type == "regression" and back.labels is None
    assert back.head_config == head
    with pytest.raises(ValueError) as info:
        save_pretrained(SequenceClassifier(config, 4), tmp_path)
    assert (
        "cannot be written as RobertaForSequenceClassification: its head must have dense=True "
        "(got False), input_dropout=True (got False)\n"
    ) in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pad_token_id": None}, "pad_token_id must be an int >= 0 .*RoBERTa's positions start "
                                 "after it.*got None"),
        ({"max_position_embeddings": 2}, r"max_position_embeddings must exceed pad_token_id \+ "
                                         r"1 = 2 \(RoBERTa's positions start there\), got 2"),
        ({"is_decoder": True}, "is_decoder must be false .*got True"),
        ({"position_embedding_type": "relative_key"},
         "position_embedding_type must be 'absolute' .*relative_key and relative_key_query are "
         "not supported.*got 'relative_key'"),
        ({"architectures": "RobertaModel"},
         "architectures must be a list of class names, got 'RobertaModel'"),
        ({"model_type": "xlm"}, r"model_type must be 'bert' or 'roberta' or 'xlm-roberta' or .*"
                                r"got 'xlm'"),
    ],
)  # fmt: skip
def test_config_fields_refused_are_named(roberta_dir, changes, message):
    edit_config(roberta_dir, **changes)
    with pytest.raises(PretrainedError, match=message):
        load_pretrained(roberta_dir)


def test_a_masked_lm_with_an_untied_decoder_is_refused(tmp_path):
    torch.manual_seed(0)
    config = transformers.RobertaConfig(**SIZE, tie_word_embeddings=False)
    transformers.RobertaForMaskedLM(config).save_pretrained(tmp_path)
    with pytest.raises(PretrainedError, match="tie_word_embeddings must be true .*got False"):
        load_pretrained(tmp_path)
    assert isinstance(load_pretrained(tmp_path, head=False), TextEncoder)


def test_an_older_file_with_the_tied_copies_loads(tmp_path):
    """Files written before transformers 5 hold lm_head.decoder.weight and .bias, the copies
    of the embeddings and lm_head.bias; they are dropped, as transformers does."""
    from safetensors.torch import load_file, save_file

    config = transformers.RobertaConfig(**SIZE)
    theirs = saved_reference(transformers.RobertaForMaskedLM, config, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["lm_head.decoder.weight"] = state["roberta.embeddings.word_embeddings.weight"].clone()
    state["lm_head.decoder.bias"] = state["lm_head.bias"].clone()
    save_file(state, tmp_path / "model.safetensors", {"format": "pt"})
    ours = load_pretrained(tmp_path)
    assert isinstance(ours, MaskedLM)
    ids, mask = ids_of([12, 4], 12)
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask.long()).logits
        torch.testing.assert_close(ours(ids, mask)[mask], ref[mask], atol=ATOL, rtol=0)
