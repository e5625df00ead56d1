"""Weights both ways between SpanBert and transformers BERT: equal outputs, clean loads, exact round trip,
and import errors that name what disagrees."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.hf.conftest import TOL, all_tensors, batch, hf_bert_config, randomise, tiny_config
from trainer.export import export_model
from trainer.hf import load_hf_weights, model_config_from_hf
from trainer.model import SpanBert

transformers = pytest.importorskip("transformers")


def _legacy_name(key: str) -> str:
    return key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")


def save_hf_dir(hf_model, directory, vocab, layout: str):
    """A transformers directory as users have them: 'safetensors' (save_pretrained today), 'legacy-bin'
    (pytorch_model.bin with gamma/beta, the position_ids buffer and the tied decoder copies, as
    bert-base-cased), 'encoder-bin' (BertModel keys without `bert.`, no heads: the SpanBERT release)."""
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "safetensors":
        hf_model.save_pretrained(directory)
    else:
        # state_dict() also holds the tied cls.predictions.decoder.{weight,bias} copies, as 4.x files do.
        state = {k: v.clone() for k, v in hf_model.state_dict().items()}
        state["embeddings.position_ids" if layout == "encoder-bin" else "bert.embeddings.position_ids"] = \
            torch.arange(hf_model.config.max_position_embeddings)[None]
        torch.save({_legacy_name(k): v for k, v in state.items()}, directory / "pytorch_model.bin")
        hf_model.config.to_json_file(directory / "config.json")
    shutil.copy(vocab.path, directory / "vocab.txt")
    return directory


def our_outputs(model: SpanBert, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state, MLM logits at every position)."""
    with torch.no_grad():
        hidden = model.bert(ids, mask.bool())  # the trainer feeds a bool mask
        return hidden, model.mlm_logits(hidden)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor) -> None:
    keep = mask.bool()  # padded positions are undefined in both implementations
    assert (ours[keep] - theirs[keep]).abs().max().item() <= TOL


@pytest.mark.parametrize("layout", ["safetensors", "legacy-bin", "encoder-bin"])
def test_transformers_weights_imported_give_the_same_outputs(tmp_path, vocab, layout):
    cfg = tiny_config()
    hf_cls = transformers.BertModel if layout == "encoder-bin" else transformers.BertForMaskedLM
    hf = randomise(hf_cls(hf_bert_config(cfg)), seed=1)
    hf_dir = save_hf_dir(hf, tmp_path / "hf", vocab, layout)

    model = SpanBert(model_config_from_hf(hf_dir, sbo_position_dim=16, max_sbo_targets=5)).eval()
    report = load_hf_weights(model, hf_dir, vocab_sha256=vocab.sha256)

    ids, mask = batch(cfg)
    hidden, logits = our_outputs(model, ids, mask)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask)
    if layout == "encoder-bin":  # no MLM head in the checkpoint: it keeps its init, the pooler is unused
        assert_close(hidden, out.last_hidden_state, mask)
        heads = sorted(n for n in model.state_dict() if n.startswith(("cls.predictions.", "cls.sbo.")))
        assert sorted(report.kept_init) == heads
        assert report.unused == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    else:
        with torch.no_grad():
            theirs_hidden = hf.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_close(hidden, theirs_hidden, mask)
        assert_close(logits, out.logits, mask)
        assert report.unused == []
    assert all(n.startswith(("cls.sbo.", "cls.predictions.")) for n in report.kept_init)
    assert any(n.startswith("cls.sbo.") for n in report.kept_init)  # a BERT checkpoint has no SBO head
    assert sorted(report.loaded + report.kept_init) == sorted(model.state_dict())


def test_exported_model_loads_clean_with_the_same_logits(tmp_path, vocab):
    cfg = tiny_config()
    model = randomise(SpanBert(cfg), seed=2)
    out_dir = export_model(model.state_dict(), cfg, vocab, tmp_path / "out")

    mlm, info = transformers.BertForMaskedLM.from_pretrained(out_dir, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}  # nothing missing, unexpected, mismatched
    ids, mask = batch(cfg, seed=3)
    hidden, logits = our_outputs(model, ids, mask)
    with torch.no_grad():
        assert_close(logits, mlm.eval()(input_ids=ids, attention_mask=mask).logits, mask)

    # BertModel: the pre-training directory has no pooler (SpanBERT never trains one) and carries the MLM
    # head, which transformers reports as unexpected for the bare encoder (as for bert-base-cased).
    mlm_head = {n for n in model.state_dict() if n.startswith("cls.predictions.")}
    bare, info = transformers.BertModel.from_pretrained(out_dir, add_pooling_layer=False, output_loading_info=True)
    assert info["missing_keys"] == set() and info["mismatched_keys"] == set()
    assert info["unexpected_keys"] == mlm_head
    _, info = transformers.BertModel.from_pretrained(out_dir, output_loading_info=True)  # with its pooler
    assert info["missing_keys"] == {"pooler.dense.weight", "pooler.dense.bias"} and info["unexpected_keys"] == mlm_head
    with torch.no_grad():
        assert_close(hidden, bare.eval()(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    text = "Span boundaries: naïve Łódź, 1907.10529"
    cls, sep, mask_id = (vocab.tokens.index(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
    from contract.tokenizer import wordpiece_from_vocab

    # Exactly the pipeline's word pieces (cased, accents kept), wrapped in [CLS] ... [SEP].
    assert tok(text)["input_ids"] == [cls, *wordpiece_from_vocab(vocab.path).encode(text).ids, sep]
    assert tok.convert_tokens_to_ids("[MASK]") == mask_id == tok.mask_token_id
    assert tok.model_max_length == cfg.max_position and json.loads((out_dir / "sbo_head.json").read_text())


def test_encoder_only_export_loads_clean_in_bert_model(tmp_path, vocab):
    cfg = tiny_config()
    model = randomise(SpanBert(cfg), seed=4)
    out_dir = export_model(model.state_dict(), cfg, vocab, tmp_path / "enc", encoder_only=True)

    bare, info = transformers.BertModel.from_pretrained(out_dir, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    ids, mask = batch(cfg, seed=5)
    hidden, _ = our_outputs(model, ids, mask)
    with torch.no_grad():
        assert_close(hidden, bare.eval()(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    assert not (out_dir / "sbo_head.safetensors").exists()
    assert json.loads((out_dir / "spanbert_export.json").read_text())["pooler"].startswith("fresh")


def test_nsp_run_exports_bert_for_pretraining(tmp_path, vocab):
    cfg = tiny_config(objective="mlm+nsp")
    model = randomise(SpanBert(cfg), seed=6)
    out_dir = export_model(model.state_dict(), cfg, vocab, tmp_path / "nsp")

    pre, info = transformers.BertForPreTraining.from_pretrained(out_dir, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    ids, mask = batch(cfg, seed=7)
    out = pre.eval()(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        hidden, logits = our_outputs(model, ids, mask)
        nsp = model.cls.seq_relationship(model.bert.pooler(hidden))
    assert_close(logits, out.prediction_logits, mask)
    assert (nsp - out.seq_relationship_logits).abs().max().item() <= TOL
    assert not (out_dir / "sbo_head.safetensors").exists()
    # The trained pooler is the encoder-only export's pooler too.
    enc = export_model(model.state_dict(), cfg, vocab, tmp_path / "nsp-enc", encoder_only=True)
    bare, info = transformers.BertModel.from_pretrained(enc, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    with torch.no_grad():
        pooled = bare.eval()(input_ids=ids, attention_mask=mask).pooler_output
    assert (model.bert.pooler(hidden) - pooled).abs().max().item() <= TOL


def test_export_import_export_is_exact(tmp_path, vocab):
    cfg = tiny_config()
    original = randomise(SpanBert(cfg), seed=8)
    first = export_model(original.state_dict(), cfg, vocab, tmp_path / "a")

    torch.manual_seed(123)  # a different init, so an unloaded tensor would show
    model = SpanBert(model_config_from_hf(first))
    report = load_hf_weights(model, first, vocab_sha256=vocab.sha256)
    assert report.kept_init == [] and report.unused == []
    assert model.cfg == cfg  # shape and SBO settings come back from config.json + sbo_head.json
    for name, t in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    second = export_model(model.state_dict(), cfg, vocab, tmp_path / "b")

    a, b = all_tensors(first), all_tensors(second)
    assert a.keys() == b.keys() and any(k.startswith("sbo_head.safetensors/") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("config.json", "sbo_head.json", "vocab.txt", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


# -- errors ----------------------------------------------------------------------------------------
@pytest.fixture
def hf_dir(tmp_path, vocab):
    cfg = tiny_config()
    return save_hf_dir(transformers.BertForMaskedLM(hf_bert_config(cfg)), tmp_path / "hf", vocab, "safetensors")


def test_vocabulary_with_other_tokens_is_refused(hf_dir, vocab):
    swapped = list(vocab.tokens)
    swapped[1000], swapped[1001] = swapped[1001], swapped[1000]
    (hf_dir / "vocab.txt").write_text("\n".join(swapped) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocabulary sha256 \w{12}\.\.\. differs from the run's " + vocab.sha256[:12]):
        load_hf_weights(SpanBert(tiny_config()), hf_dir, vocab_sha256=vocab.sha256)


def test_vocabulary_of_another_size_is_refused(hf_dir, vocab):
    (hf_dir / "vocab.txt").write_text("\n".join([*vocab.tokens, "[extra]"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="vocabulary has 28997 entries, the run has 28996"):
        load_hf_weights(SpanBert(tiny_config()), hf_dir, vocab_sha256=vocab.sha256)


def test_missing_vocabulary_is_refused(hf_dir, vocab):
    (hf_dir / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no vocab.txt or tokenizer.json"):
        load_hf_weights(SpanBert(tiny_config()), hf_dir, vocab_sha256=vocab.sha256)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hidden_size", 64, "hidden_size: HF 32 vs run 64.*--set model.hidden_size=32"),
    ("num_heads", 2, "num_heads: HF 4 vs run 2"),  # invisible in every tensor shape
    ("max_position", 128, "max_position: HF 64 vs run 128"),
])
def test_config_shape_mismatch_is_refused(hf_dir, vocab, field, value, message):
    with pytest.raises(ValueError, match=message):
        load_hf_weights(SpanBert(tiny_config(**{field: value})), hf_dir, vocab_sha256=vocab.sha256)


def test_tensor_shape_mismatch_and_missing_encoder_tensors_are_refused(hf_dir, vocab):
    state = load_file(hf_dir / "model.safetensors")
    state["cls.predictions.transform.dense.weight"] = torch.zeros(32, 31)
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"cls.predictions.transform.dense.weight: HF \(32, 31\) vs run \(32, 32\)"):
        load_hf_weights(SpanBert(tiny_config()), hf_dir, vocab_sha256=vocab.sha256)

    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks encoder tensors \['bert.encoder.layer.1.output.dense.weight'\]"):
        load_hf_weights(SpanBert(tiny_config()), hf_dir, vocab_sha256=vocab.sha256)


def test_model_config_from_hf_reads_the_shape_and_refuses_other_activations(hf_dir):
    cfg = model_config_from_hf(hf_dir, objective="mlm")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.max_position) == (32, 2, 4, 64, 64)
    assert cfg.objective == "mlm"
    raw = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**raw, "hidden_act": "gelu_new"}))
    with pytest.raises(ValueError, match="hidden_act 'gelu_new'"):
        model_config_from_hf(hf_dir)


def test_untied_decoder_and_other_sbo_shapes_are_refused(hf_dir, tmp_path, vocab):
    state = load_file(hf_dir / "model.safetensors")
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"] + 1
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="differs from the word embeddings"):
        load_hf_weights(SpanBert(tiny_config()), hf_dir, vocab_sha256=vocab.sha256)

    exported = export_model(SpanBert(tiny_config()).state_dict(), tiny_config(), vocab, tmp_path / "sbo16")
    with pytest.raises(ValueError, match="sbo_position_dim: HF 16 vs run 8"):
        load_hf_weights(SpanBert(tiny_config(sbo_position_dim=8)), exported, vocab_sha256=vocab.sha256)
