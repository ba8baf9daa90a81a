"""BERT, RoBERTa and XLM-RoBERTa checkpoints, bare and with each task head, made by transformers
(random, every parameter perturbed): loaded with outputs equal to transformers' on a padded
batch, and saved back to files the same transformers class loads, key for key, with the same
outputs and labels."""

from __future__ import annotations

import logging

import pytest
import torch
from models.formats.helpers import (
    TEXT_SIZE,
    assert_same_weights,
    encoder_of,
    hf_output,
    loads_cleanly,
    max_difference,
    padded_ids,
    read_config,
    saved_reference,
    two_segments,
)

from encoderkit import PretrainedError, TextEncoder, load_pretrained, save_pretrained
from encoderkit.models.heads import MaskedLM, SequenceClassifier, TokenClassifier

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
SIZE = TEXT_SIZE
LABELS = ["negative", "neutral", "positive"]

# family -> (config class, config changes, class prefix, model_type save_pretrained is told)
FAMILIES = {
    # gelu_new: BERT's masked-LM transform takes the encoder's activation
    "bert": (transformers.BertConfig, dict(hidden_act="gelu_new"), "Bert", None),
    # one segment and eps 1e-5, as roberta-base; RoBERTa is what a positions offset saves as
    "roberta": (
        transformers.RobertaConfig, dict(type_vocab_size=1, layer_norm_eps=1e-5), "Roberta", None
    ),
    "xlm-roberta": (
        transformers.XLMRobertaConfig, dict(classifier_dropout=0.2), "XLMRoberta", "xlm-roberta"
    ),
}  # fmt: skip
HEADS = {
    "Model": TextEncoder,
    "ForSequenceClassification": SequenceClassifier,
    "ForTokenClassification": TokenClassifier,
    "ForMaskedLM": MaskedLM,
}
CASES = [(family, head) for family in FAMILIES for head in HEADS]


def batch(config):
    """A right-padded batch (lengths 11, 7, 2) of ids from 3 on, padded with the pad id, with two
    segments when the model has them."""
    ids, mask = padded_ids([11, 7, 2], 11, low=3, vocab=config.vocab_size, pad=config.pad_token_id)
    return ids, mask, two_segments(mask) if config.type_vocab_size > 1 else None


def run_ours(ours, ids, mask, segments):
    with torch.no_grad():
        return ours(ids, mask, segments)


def save_theirs(family, head, tmp_path_factory):
    """A transformers model of the family and class, perturbed and saved; (dir, model, case)."""
    config_class, changes, prefix, _ = FAMILIES[family]
    config = config_class(
        **SIZE, **changes, id2label=dict(enumerate(LABELS)), attn_implementation="eager"
    )
    directory = tmp_path_factory.mktemp(f"{family}{head}")
    theirs = saved_reference(getattr(transformers, prefix + head), config, directory)
    return directory, theirs, (family, head)


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{h}" for f, h in CASES])
def checkpoint(request, tmp_path_factory):
    return save_theirs(*request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=list(FAMILIES))
def masked_lm(request, tmp_path_factory):
    return save_theirs(request.param, "ForMaskedLM", tmp_path_factory)


def test_loads_with_outputs_equal_to_transformers(checkpoint):
    directory, theirs, (_, head) = checkpoint
    ours = load_pretrained(directory)
    assert type(ours) is HEADS[head]
    ids, mask, segments = batch(theirs.config)
    ref = hf_output(theirs, ids, mask, segments)
    out = run_ours(ours, ids, mask, segments)
    assert out.shape == ref.shape
    assert max_difference(out, ref, mask) <= ATOL
    if head not in ("Model", "ForMaskedLM"):
        assert ours.labels == tuple(LABELS)


def test_saved_back_loads_in_the_same_transformers_class_with_the_same_outputs(
    checkpoint, tmp_path
):
    directory, theirs, (family, head) = checkpoint
    ours = load_pretrained(directory)
    save_pretrained(ours, tmp_path, model_type=FAMILIES[family][3])
    written = read_config(tmp_path)
    assert written["architectures"] == [type(theirs).__name__]
    assert written["model_type"] == family
    back = loads_cleanly(type(theirs), tmp_path)  # nothing missing, unexpected or mismatched
    ids, mask, segments = batch(theirs.config)
    ref = hf_output(back, ids, mask, segments)
    assert max_difference(run_ours(ours, ids, mask, segments), ref, mask) <= ATOL
    if head not in ("Model", "ForMaskedLM"):  # a masked-LM's classes are its vocabulary
        assert written["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
        assert back.config.id2label == dict(enumerate(LABELS))
    again = load_pretrained(tmp_path)  # and ours reads its own file back, tensor for tensor
    assert type(again) is type(ours) and encoder_of(again).config == encoder_of(ours).config
    assert_same_weights(ours, again)


def test_head_false_gives_the_encoder_of_any_checkpoint(checkpoint):
    directory, theirs, _ = checkpoint
    ours = load_pretrained(directory, head=False)
    assert type(ours) is TextEncoder
    ids, mask, segments = batch(theirs.config)
    base = theirs.base_model if theirs.base_model is not theirs else theirs
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask.long(), token_type_ids=segments)
    assert max_difference(run_ours(ours, ids, mask, segments), ref.last_hidden_state, mask) <= ATOL


def test_masked_lm_decoder_is_the_embedding_table(masked_lm):
    directory, theirs, _ = masked_lm
    ours = load_pretrained(directory)
    table = ours.encoder.embeddings.tokens.weight
    # one parameter: as many as transformers counts with its ties, none for a decoder weight
    assert sum(p.numel() for p in ours.parameters()) == theirs.num_parameters()
    assert not any("decoder" in name for name, _ in ours.named_parameters())
    ids, mask, segments = batch(theirs.config)
    with torch.no_grad():
        table[5].add_(1.0)  # moving a token's embedding moves its output logit at every position
        out = ours(ids, mask, segments)
        table[5].sub_(1.0)
        before = ours(ids, mask, segments)
    assert (out[mask][:, 5] - before[mask][:, 5]).abs().min() > 0


def test_masked_lm_gradients_reach_the_table_through_the_decoder(masked_lm):
    directory, theirs, _ = masked_lm
    ours = load_pretrained(directory)
    ids, mask, segments = batch(theirs.config)
    ours(ids, mask, segments)[mask].sum().backward()
    grad = ours.encoder.embeddings.tokens.weight.grad
    unused = sorted(set(range(theirs.config.vocab_size)) - set(ids[mask].tolist()))
    assert grad[unused].abs().sum(dim=1).min() > 0  # rows no input reads: the decoder's gradient


def test_an_unsupported_architecture_is_named_and_head_false_loads_its_encoder(tmp_path):
    config = transformers.RobertaConfig(**SIZE, type_vocab_size=1)
    theirs = saved_reference(transformers.RobertaForQuestionAnswering, config, tmp_path)
    with pytest.raises(PretrainedError) as info:
        load_pretrained(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'config.json'}: architectures[0] 'RobertaForQuestionAnswering' is not "
        "supported for model_type 'roberta'; supported: RobertaModel, "
        "RobertaForSequenceClassification, RobertaForTokenClassification, RobertaForMaskedLM. "
        "Pass head=False to load the encoder alone, without the head"
    )
    ours = load_pretrained(tmp_path, head=False)  # qa_outputs.* dropped
    ids, mask, _ = batch(config)
    with torch.no_grad():
        ref = theirs.roberta(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert max_difference(run_ours(ours, ids, mask, None), ref, mask) <= ATOL
