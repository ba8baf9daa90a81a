"""BERT, RoBERTa and XLM-RoBERTa checkpoints, bare and with each task head, made by transformers
(random, every parameter perturbed): loaded with outputs equal to transformers' on a padded
batch, and saved back to files the same transformers class loads, key for key, with the same
outputs and labels."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from reference import padding_mask

from encoderkit import PretrainedError, TextEncoder, load_pretrained, save_pretrained
from encoderkit.models.heads import MaskedLM, SequenceClassifier, TokenClassifier

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
SIZE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=24)  # fmt: skip
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


def perturbed(model, seed=1):
    """Every parameter off its init, so a swapped or missed tensor shows; in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def batch(config):
    """A right-padded batch (lengths 11, 7, 2) padded with the pad id, with two segments when the
    model has them."""
    g = torch.Generator().manual_seed(2)
    mask = padding_mask([11, 7, 2], 11)
    ids = torch.randint(3, config.vocab_size, (3, 11), generator=g)
    ids = ids.masked_fill(~mask, config.pad_token_id)
    segments = None
    if config.type_vocab_size > 1:
        segments = ((torch.arange(11) >= 4)[None] & mask).long()
    return ids, mask, segments


def run_theirs(theirs, ids, mask, segments):
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=mask.long(), token_type_ids=segments)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def run_ours(ours, ids, mask, segments):
    with torch.no_grad():
        return ours(ids, mask, segments)


def worst(ours_out, ref, mask):
    """The largest difference, over real tokens for per-token outputs."""
    if ref.dim() == 3:
        ours_out, ref = ours_out[mask], ref[mask]
    return (ours_out - ref).abs().max().item()


def encoder(model):
    return model if isinstance(model, TextEncoder) else model.encoder


def save_theirs(family, head, tmp_path_factory):
    """A transformers model of the family and class, perturbed and saved; (dir, model, case)."""
    config_class, changes, prefix, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = config_class(
        **SIZE, **changes, id2label=dict(enumerate(LABELS)), attn_implementation="eager"
    )
    theirs = perturbed(getattr(transformers, prefix + head)(config))
    directory = tmp_path_factory.mktemp(f"{family}{head}")
    theirs.save_pretrained(directory)
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
    ref = run_theirs(theirs, ids, mask, segments)
    out = run_ours(ours, ids, mask, segments)
    assert out.shape == ref.shape
    assert worst(out, ref, mask) <= ATOL
    if head not in ("Model", "ForMaskedLM"):
        assert ours.labels == tuple(LABELS)


def test_saved_back_loads_in_the_same_transformers_class_with_the_same_outputs(
    checkpoint, tmp_path
):
    directory, theirs, (family, head) = checkpoint
    ours = load_pretrained(directory)
    save_pretrained(ours, tmp_path, model_type=FAMILIES[family][3])
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [type(theirs).__name__]
    assert written["model_type"] == family
    cls = type(theirs)
    back, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask, segments = batch(theirs.config)
    ref = run_theirs(back.eval(), ids, mask, segments)
    assert worst(run_ours(ours, ids, mask, segments), ref, mask) <= ATOL
    if head not in ("Model", "ForMaskedLM"):  # a masked-LM's classes are its vocabulary
        assert written["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
        assert back.config.id2label == dict(enumerate(LABELS))
    again = load_pretrained(tmp_path)  # and ours reads its own file back, tensor for tensor
    assert type(again) is type(ours) and encoder(again).config == encoder(ours).config
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_head_false_gives_the_encoder_of_any_checkpoint(checkpoint):
    directory, theirs, _ = checkpoint
    ours = load_pretrained(directory, head=False)
    assert type(ours) is TextEncoder
    ids, mask, segments = batch(theirs.config)
    base = theirs.base_model if theirs.base_model is not theirs else theirs
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask.long(), token_type_ids=segments)
    assert worst(run_ours(ours, ids, mask, segments), ref.last_hidden_state, mask) <= ATOL


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
    torch.manual_seed(0)
    config = transformers.RobertaConfig(**SIZE, type_vocab_size=1)
    theirs = perturbed(transformers.RobertaForQuestionAnswering(config))
    theirs.save_pretrained(tmp_path)
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
    assert worst(run_ours(ours, ids, mask, None), ref, mask) <= ATOL
