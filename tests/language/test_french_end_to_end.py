"""French, end to end, on real text (Debian Reference, tests/fixtures/french/): a WordPiece vocabulary from
`pipeline.vocab`, shards annotated by fr_core_news_sm, `masking.stats` for the five schemes, a tiny training
run, the export, and transformers loading it and reproducing the shards' ids on held-out sentences."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from contract.schema import open_shard, read_manifest
from tests.language.conftest import CORPUS, HELDOUT, ONE_WORKER, documents

pytestmark = pytest.mark.slow

# GUIDE §10: the *_core_news_* models use WikiNER, four labels, none numeric.
WIKINER = ["LOC", "MISC", "ORG", "PER"]
SCHEMES = ("subword", "whole_word", "named_entity", "noun_phrase", "geometric")


def _table(shards: Path) -> pa.Table:
    return pa.concat_tables([open_shard(p) for p in read_manifest(shards).shard_paths])


def test_manifest_records_the_french_models_spans(french_shards):
    manifest = read_manifest(french_shards).manifest
    spacy = manifest.spacy
    assert (spacy.model, spacy.lang, spacy.label_scheme) == ("fr_core_news_sm", "fr", "wikiner")
    assert list(spacy.entity_labels) == WIKINER
    assert spacy.default_excluded_entity_labels == ()  # nothing numeric to leave out
    assert spacy.noun_phrases == spacy.entities == "available"
    recount = Counter(e["label"] for row in _table(french_shards).column("entity_spans").to_pylist() for e in row)
    assert manifest.spans.entity_labels == dict(recount) and set(recount) <= set(WIKINER) and len(recount) >= 3
    nps = sum(len(r) for r in _table(french_shards).column("noun_phrase_spans").to_pylist())
    assert nps == manifest.spans.noun_phrase_spans > 100


def test_masking_stats_for_the_five_schemes(french_shards, capsys):
    from contract.cli import run_main
    from masking.stats import main

    table = _table(french_shards)
    labels = Counter(e["label"] for row in table.column("entity_spans").to_pylist() for e in row)
    reports = {}
    for scheme in SCHEMES:
        assert run_main(main, ["--shards", str(french_shards), "--scheme", scheme, "--blocks", "800", "--json"]) == 0
        reports[scheme] = json.loads(capsys.readouterr().out)
    for scheme, r in reports.items():
        assert r["distinct_blocks"] == table.num_rows  # every block seen
        # The paper's budget: 15% of the pieces (per-block rounding of 62-piece blocks moves it a little).
        assert abs(r["masked_fraction"] - 0.15) < 0.015, (scheme, r["masked_fraction"])
        assert r["entity_labels"] == dict(sorted(labels.items())) and r["excluded_entity_labels"] == []
    g = reports["geometric"]
    assert g["sampled_tv_to_paper"] < 0.05 and abs(g["mean_sampled_span_words"] - g["paper_mean"]) < 0.3
    assert g["mean_span_words"] > 2 * reports["subword"]["mean_span_words"]  # spans, not single pieces
    for scheme in ("named_entity", "noun_phrase"):
        assert reports[scheme]["given_span_fraction"] > 0.2, scheme  # the French model's spans are used


def test_train_export_and_transformers_reproduce_the_ids(french_shards, tmp_path):
    import torch
    from transformers import BertForMaskedLM, BertTokenizerFast

    from pipeline.run import run as run_pipeline
    from tests.trainer.conftest import tiny_config
    from trainer.export import export_checkpoint
    from trainer.train import run as train

    cfg = tiny_config(model={"vocab_size": read_manifest(french_shards).vocab_size},
                      train={"max_steps": 4, "ckpt_every": 4})
    summary = train(cfg, french_shards, tmp_path / "run")
    assert summary["step"] == 4
    out = export_checkpoint(tmp_path / "run", tmp_path / "export", data=str(french_shards))

    model, info = BertForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tok = BertTokenizerFast.from_pretrained(str(out))

    # The training shards: each document's blocks, concatenated, are what transformers gives for its text.
    texts = documents(CORPUS)
    table = _table(french_shards)
    by_doc: dict[str, list[int]] = {}
    for doc_id, ids in zip(table.column("doc_id").to_pylist(), table.column("input_ids").to_pylist(), strict=True):
        by_doc.setdefault(doc_id.split("#", 1)[1], []).extend(ids)
    same = [d for d, ids in by_doc.items() if ids == tok(texts[d], add_special_tokens=False)["input_ids"]]
    assert len(same) >= len(by_doc) - 1, sorted(set(by_doc) - set(same))  # one document loses markup in cleaning

    # Held-out sentences (never seen by the vocabulary or the model) through the pipeline, then transformers.
    held = tmp_path / "heldout"
    run_pipeline(["--input", f"text:{HELDOUT}", "--tokenizer", str(french_shards / "tokenizer.json"), "--output",
                  str(held), "--no-annotate", "--block-size", "64", "--num-shards", "1", *ONE_WORKER])
    ids = [i for row in _table(held).column("input_ids").to_pylist() for i in row]
    text = HELDOUT.read_text(encoding="utf-8")
    assert ids == tok(text, add_special_tokens=False)["input_ids"] and len(ids) > 2000

    sentence = text.split(". ")[0] + "."
    enc = tok(sentence, return_tensors="pt", truncation=True)  # model_max_length: the model's 64 positions
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], tok.vocab_size) and np.isfinite(logits.numpy()).all()
