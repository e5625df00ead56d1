"""Uncased models: `pipeline.vocab --lowercase`, the pipeline's --lowercase, the normaliser in the manifest,
the export's do_lower_case (transformers reproduces the shard ids), and --init-from refusing the other case."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from contract.schema import open_shard, read_manifest
from tests.language.conftest import CORPUS, ONE_WORKER, documents, first_documents


def bert_uncased(text: str) -> str:
    """BERT's uncased normalisation by hand (its tokenization.py): whitespace (\\n, Zs: no-break spaces) to
    " ", lower-case, NFD, drop combining marks. (The text holds no control characters to remove.)"""
    spaced = "".join(" " if c in "\t\n\r" or unicodedata.category(c) == "Zs" else c for c in text)
    return "".join(c for c in unicodedata.normalize("NFD", spaced.lower()) if unicodedata.category(c) != "Mn")


@pytest.fixture(scope="module")
def uncased(tmp_path_factory) -> tuple[Path, Path]:
    """(vocabulary directory, shard directory): an uncased vocabulary of 4 French documents and those
    documents through the pipeline with --vocab vocab.txt --lowercase."""
    from pipeline.run import run
    from pipeline.vocab import main

    root = tmp_path_factory.mktemp("uncased")
    corpus = first_documents(root / "fr.jsonl", 4)
    assert main(["--input", f"jsonl:{corpus}", "--output", str(root / "vocab"), "--vocab-size", "1500", "--lowercase"]) == 0
    run(["--input", f"jsonl:{corpus}", "--vocab", str(root / "vocab" / "vocab.txt"), "--lowercase", "--output",
         str(root / "shards"), "--no-annotate", "--block-size", "64", "--num-shards", "1", *ONE_WORKER])
    return root / "vocab", root / "shards"


def test_uncased_vocabulary_is_lower_case_without_accents(uncased):
    from contract.tokenizer import load_tokenizer

    vocab_dir, _ = uncased
    tokens = (vocab_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = [t.removeprefix("##") for t in tokens if t and not t.startswith("[")]
    assert not any(c.isupper() for w in words for c in w)
    assert not any(c in w for w in words for c in "éèàçêô")  # accents stripped (French is full of them)
    text = documents(CORPUS)["debian-reference-fr-000"]
    assert load_tokenizer(vocab_dir / "tokenizer.json").normalizer.normalize_str(text) == bert_uncased(text)


def test_manifest_records_the_normaliser(uncased):
    _, shards = uncased
    man = read_manifest(shards)
    assert man.manifest.tokenizer.normalizer["lowercase"] is True and man.lowercase
    assert man.vocabulary().lowercase


def test_a_swapped_normaliser_is_refused(uncased, tmp_path):
    """The same pieces with the cased normaliser: the tokens' sha256 matches, the recorded normaliser does not."""
    import shutil

    from contract.schema import ShardError
    from contract.tokenizer import load_tokenizer

    _, shards = uncased
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    tok = load_tokenizer(copy / "tokenizer.json")
    tok.normalizer = load_tokenizer(copy / "vocab.txt").normalizer  # vocab.txt loads cased
    tok.save(str(copy / "tokenizer.json"))
    with pytest.raises(ShardError, match="keeps case; the manifest recorded a lower-casing normaliser"):
        read_manifest(copy).vocabulary()


def test_lowercase_goes_with_vocab_only(uncased, tmp_path, capsys):
    from contract.cli import run_main
    from pipeline.run import main

    vocab_dir, _ = uncased
    argv = ["--input", f"jsonl:{CORPUS}", "--tokenizer", str(vocab_dir / "tokenizer.json"), "--lowercase",
            "--output", str(tmp_path / "o"), "--no-annotate"]
    assert run_main(main, argv) == 2
    assert "--lowercase goes with --vocab" in capsys.readouterr().err


@pytest.mark.slow
def test_export_sets_do_lower_case_and_transformers_gives_the_shard_ids(uncased, tmp_path):
    from transformers import BertTokenizerFast

    from trainer.export import save_tokenizer

    _, shards = uncased
    save_tokenizer(read_manifest(shards).vocabulary(), 64, tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["do_lower_case"] is True
    tok = BertTokenizerFast.from_pretrained(str(tmp_path))
    table = open_shard(read_manifest(shards).shard_paths[0])
    by_doc: dict[str, list[int]] = {}
    for doc_id, ids in zip(table.column("doc_id").to_pylist(), table.column("input_ids").to_pylist(), strict=True):
        by_doc.setdefault(doc_id.split("#", 1)[1], []).extend(ids)
    texts = documents(CORPUS)
    assert len(by_doc) == 4
    for doc, ids in by_doc.items():
        assert tok(texts[doc], add_special_tokens=False)["input_ids"] == ids, doc


@pytest.mark.slow
def test_init_from_refuses_the_other_case(uncased, french_vocab, tmp_path):
    from contract.tokenizer import read_vocabulary
    from trainer.export import save_tokenizer
    from trainer.hf import check_case, hf_lowercase

    vocab_dir, shards = uncased
    cased_dir, uncased_dir, bare_dir = tmp_path / "cased", tmp_path / "uncased", tmp_path / "bare"
    save_tokenizer(read_vocabulary(french_vocab / "tokenizer.json"), 64, cased_dir)
    save_tokenizer(read_vocabulary(vocab_dir / "tokenizer.json"), 64, uncased_dir)
    bare_dir.mkdir()
    (bare_dir / "vocab.txt").write_bytes((vocab_dir / "vocab.txt").read_bytes())  # no casing recorded
    assert [hf_lowercase(d)[0] for d in (cased_dir, uncased_dir, bare_dir)] == [False, True, True]
    check_case(uncased_dir, True)
    with pytest.raises(ValueError, match=r"the model is cased \(tokenizer_config.json do_lower_case\), the shards are uncased"):
        check_case(cased_dir, True)
    with pytest.raises(ValueError, match="the model is uncased .*, the shards are cased"):
        check_case(uncased_dir, False)

    # The run itself: refused before any weight is read (the directory holds none).
    from tests.trainer.conftest import tiny_config
    from trainer.train import run

    cfg = tiny_config(model={"vocab_size": read_manifest(shards).vocab_size})
    with pytest.raises(ValueError, match="the model is cased"):
        run(cfg, shards, tmp_path / "run", init_from=cased_dir)
