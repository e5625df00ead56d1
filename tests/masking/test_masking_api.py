"""The contract the trainer codes against: config validation, API shapes, no torch, the stats CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from masking import SCHEMES, Block, MaskedBlock, Masker, MaskingConfig
from masking.sampler import GIVEN_SPAN_ID
from tests.conftest import GUTENBERG, REPO, VOCAB
from tests.masking.invariants import MASKED_BLOCK_FIELDS, keyed


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"scheme": "span"}, "scheme"),
        ({"mask_ratio": 0.0}, "mask_ratio"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"geometric_p": 0.0}, "geometric_p"),
        ({"max_span_words": 0}, "max_span_words"),
        ({"mask_prob": 0.9, "random_prob": 0.2}, "mask_prob"),
        ({"random_prob": -0.1}, "random_prob"),
        ({"linguistic_share": 1.5}, "linguistic_share"),
        ({"max_sbo_targets": 0}, "max_sbo_targets"),
        ({"seed": -1}, "seed"),
        ({"excluded_entity_labels": "DATE"}, "excluded_entity_labels"),
    ],
)
def test_config_says_what_to_change(kw, field):
    with pytest.raises(ValueError, match=field):
        MaskingConfig(**kw)


def test_defaults_are_the_papers():
    c = MaskingConfig()
    assert (c.scheme, c.mask_ratio, c.geometric_p, c.max_span_words) == ("geometric", 0.15, 0.2, 10)
    assert (c.mask_prob, c.random_prob, c.linguistic_share) == (0.8, 0.1, 0.5)
    assert set(c.excluded_entity_labels) == {
        "DATE",
        "TIME",
        "PERCENT",
        "MONEY",
        "QUANTITY",
        "ORDINAL",
        "CARDINAL",
    }
    assert SCHEMES == ("subword", "whole_word", "named_entity", "noun_phrase", "geometric")


def test_masker_rejects_bad_inputs(make_masker, specials):
    with pytest.raises(ValueError, match="unigram_counts"):
        make_masker(unigram_counts=np.ones(5))
    masker = make_masker("named_entity")
    ids = np.arange(1000, 1020, dtype=np.int32)
    ws = np.ones(20, bool)
    with pytest.raises(ValueError, match="word_start"):
        masker.mask_block(Block(ids, ws[:5], 0), epoch=0)
    with pytest.raises(ValueError, match="input_ids"):
        masker.mask_block(Block(ids + 10**6, ws, 0), epoch=0)
    with pytest.raises(ValueError, match="outside"):
        masker.mask_block(Block(ids, ws, 0, entity_spans=np.array([[15, 25]]), entity_labels=["ORG"]), epoch=0)
    with pytest.raises(ValueError, match="entity_labels"):
        masker.mask_block(Block(ids, ws, 0, entity_spans=np.array([[1, 3]])), epoch=0)
    with pytest.raises(ValueError, match=">= 0"):
        masker.mask_block(Block(ids, ws, 0), epoch=-1)


def test_masked_block_fields_are_the_contract():
    assert set(MASKED_BLOCK_FIELDS) == {f.name for f in fields(MaskedBlock)}


def test_edge_spans_get_targets_with_cls_and_sep_as_boundaries(make_masker):
    """A block of one word: its span touches both edges; boundaries are -1 ([CLS]) and n ([SEP])."""
    ids = np.array([1000], np.int32)
    mb = make_masker().mask_block(Block(ids, np.ones(1, bool), 0), epoch=0)
    assert mb.spans.tolist() == [[0, 1]]
    assert (mb.sbo_left.tolist(), mb.sbo_right.tolist(), mb.sbo_rel.tolist()) == ([-1], [1], [1])
    off = make_masker(sbo_edge_spans=False).mask_block(Block(ids, np.ones(1, bool), 0), epoch=0)
    assert len(off.mlm_positions) == 1 and len(off.sbo_positions) == 0


def test_masking_never_imports_torch():
    code = (
        "import sys, masking, masking.stats, masking.corpus\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def _stats(capsys, *args: str) -> str:
    """`python -m masking.stats --vocab VOCAB ARGS` in this process (so mutation testing traces it): stdout."""
    from masking.stats import main

    capsys.readouterr()
    assert main(["--vocab", str(VOCAB), *args]) == 0
    return capsys.readouterr().out


def _stats_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`python -m masking.stats ARGV` through the commands' error wrapper, in this process: the exit status,
    stdout and stderr."""
    from contract.cli import run_main
    from masking.stats import main

    capsys.readouterr()
    status = run_main(main, list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def _reference(blocks, specials, n_blocks: int, seed: int, scheme: str = "geometric", epoch: int = 0) -> dict:
    """What `masking.stats` should report for `blocks`, recomputed block by block from mask_batch's output
    (cycling through the blocks with fresh block indices, as stats does): the words and pieces of each
    merged masked span, spans per block, the masked fraction and the share of masked pieces from given spans."""
    from tests.masking.invariants import words_of
    from tests.masking.test_masking_realised import runs

    masker = Masker(MaskingConfig(scheme=scheme, seed=seed), vocab_size=specials.size,
                    mask_id=specials.mask, special_ids=specials.specials)
    special = np.zeros(specials.size, bool)
    special[list(specials.specials)] = True
    tbs = keyed([blocks[i % len(blocks)] for i in range(n_blocks)])  # each with its entity and noun-phrase spans
    out = masker.mask_batch(tbs, epoch=epoch)
    words, pieces = [], []
    for t, mb in zip(tbs, out, strict=True):
        starts = words_of(t.input_ids, t.word_start, special)
        for s, e in runs(np.isin(np.arange(len(t.input_ids)), mb.mlm_positions)):
            words.append(int(starts[s:e].sum()))
            pieces.append(e - s)
    masked = sum(len(mb.mlm_positions) for mb in out)
    actions = np.bincount(np.concatenate([mb.mlm_replacement for mb in out]), minlength=3)
    return {"words": words, "pieces": pieces, "spans_per_block": len(words) / n_blocks,
            "masked_fraction": masked / sum(len(t.input_ids) for t in tbs),
            "given_span_fraction": sum(int((mb.mlm_span >= GIVEN_SPAN_ID).sum()) for mb in out) / masked,
            "sbo_targets_fraction": sum(len(mb.sbo_positions) for mb in out) / masked,
            "replacement": {"mask": actions[0] / masked, "random": actions[1] / masked, "keep": actions[2] / masked}}


def _paper_p(p: float = 0.2, max_words: int = 10) -> dict[str, float]:
    """P(ℓ) of the paper (§3.1): geometric with p = 0.2, clipped at 10 words and renormalised."""
    weights = {ell: p * (1 - p) ** (ell - 1) for ell in range(1, max_words + 1)}
    return {str(ell): w / sum(weights.values()) for ell, w in weights.items()}


def test_stats_cli_json_and_plot(tmp_path, tokenizer, specials, capsys):
    out = tmp_path / "fig.png"
    res = _stats(
        capsys,
        "--text",
        str(GUTENBERG / "blake-poems.txt"),
        "--scheme",
        "geometric",
        "--blocks",
        "300",  # more than one of its batches of 256 blocks
        "--seed",
        "3",
        "--json",
        "--plot",
        str(out),
    )
    r = json.loads(res)
    for key in (
        "masked_fraction",
        "sampled_span_length_hist",
        "span_length_words_hist",
        "span_length_pieces_hist",
        "replacement",
        "spans_per_block",
        "blocks",
    ):
        assert key in r
    assert r["blocks"] == 300 and abs(r["masked_fraction"] - 0.15) < 0.01
    assert abs(sum(r["sampled_span_length_hist"].values()) - 1) < 1e-9
    assert max(int(k) for k in r["sampled_span_length_hist"]) <= 10
    # The paper's P(ℓ), its mean (3.8 in §3.1) and the total variation of the sampled lengths from it.
    paper = _paper_p()
    assert r["paper_p"] == pytest.approx(paper, rel=1e-12)
    assert r["paper_mean"] == pytest.approx(sum(int(k) * v for k, v in paper.items()), rel=1e-12)
    assert round(r["paper_mean"], 1) == 3.8
    sampled = r["sampled_span_length_hist"]
    tv = 0.5 * sum(abs(sampled.get(k, 0.0) - v) for k, v in paper.items())
    assert r["sampled_tv_to_paper"] == pytest.approx(tv, rel=1e-9) and 0 < tv < 0.05
    assert r["mean_sampled_span_words"] == pytest.approx(sum(int(k) * v for k, v in sampled.items()), rel=1e-9)
    unmerged = r["unmerged_span_length_words_hist"]
    assert sum(unmerged.values()) == pytest.approx(1.0)
    assert r["mean_unmerged_span_words"] == pytest.approx(sum(int(k) * v for k, v in unmerged.items()), rel=1e-9)
    # The realised span lengths it reports are those of the masks: merged runs of masked positions,
    # counted in words with the blocks' own word starts, recomputed here from mask_batch's output.
    from masking.corpus import text_blocks

    blocks, _ = text_blocks(tokenizer, [GUTENBERG / "blake-poems.txt"], max_blocks=300)
    assert len(blocks) < 300  # the book is reused with fresh block indices
    ref = _reference(blocks, specials, 300, seed=3)
    words, pieces = ref["words"], ref["pieces"]
    for key in ("spans_per_block", "masked_fraction", "sbo_targets_fraction"):
        assert r[key] == pytest.approx(ref[key], rel=1e-12), key
    assert r["replacement"] == pytest.approx(ref["replacement"], rel=1e-12)
    assert r["distinct_blocks"] == len(blocks)
    assert r["mean_span_words"] == pytest.approx(np.mean(words), rel=1e-12)
    assert r["mean_span_pieces"] == pytest.approx(np.mean(pieces), rel=1e-12)
    hist = np.bincount(words) / len(words)
    assert r["span_length_words_hist"] == pytest.approx({str(k): v for k, v in enumerate(hist) if v})
    assert 3.3 < r["mean_span_words"] < 4.5  # geometric spans (P(ℓ) mean 3.8), not single words
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    table = _stats(capsys, "--text", str(GUTENBERG / "blake-poems.txt"), "--blocks", "10")
    assert "masked fraction" in table
    # --vocab also takes a tokenizer.json (what a shard directory holds): the same tokenizer, the same report.
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    same = _stats(capsys, "--text", str(GUTENBERG / "blake-poems.txt"), "--blocks", "10", "--vocab", str(tmp_path / "tokenizer.json"))
    assert same == table


class _Matches:
    """A stand-in for spaCy's `nlp.pipe(..., as_tuples=True)` (no spaCy to load, nothing statistical):
    entities and noun chunks are the matches of fixed regular expressions, in character offsets of the text
    it is handed; no sentences. Patterns never cross a line, and corpus.annotate hands over whole lines."""

    def __init__(self, entities: dict[str, str], chunks: tuple[str, ...]):  # entity pattern -> label
        self.entities, self.chunks = entities, chunks
        self.texts: list[str] = []  # every text handed over, in order

    @staticmethod
    def find(text: str, pattern: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in re.finditer(pattern, text)]

    def pipe(self, jobs, as_tuples: bool, batch_size: int):
        for text, context in jobs:
            self.texts.append(text)
            ents = [SimpleNamespace(start_char=s, end_char=e, label_=label)
                    for pattern, label in self.entities.items() for s, e in self.find(text, pattern)]
            chunks = [SimpleNamespace(start_char=s, end_char=e) for p in self.chunks for s, e in self.find(text, p)]
            yield SimpleNamespace(sents=[], ents=ents, noun_chunks=chunks), context


# Names (runs of capitalised words), years (a numeric label: never a given span) and "the/a/an + word".
WIKI_ENTITIES = {r"[A-Z][a-z]+(?: [A-Z][a-z]+)*": "PERSON", r"\b1[5-9]\d\d\b": "DATE"}
WIKI_CHUNKS = (r"\b(?:the|a|an) [a-z]+",)


def test_stats_text_annotates_for_the_linguistic_schemes_only(monkeypatch, capsys, tokenizer, specials):
    """--text with named_entity: the blocks are annotated (by contract.annotate's nlp: here the regex stand-in)
    and the report equals the figures recomputed from those spans; geometric never loads an nlp."""
    import contract.annotate
    from masking.corpus import annotate, text_blocks
    from tests.conftest import WIKI_EXTRACTED

    loads = []
    monkeypatch.setattr(contract.annotate, "load_nlp", lambda: loads.append(1) or _Matches(WIKI_ENTITIES, WIKI_CHUNKS))
    r = json.loads(_stats(capsys, "--text", str(WIKI_EXTRACTED), "--scheme", "named_entity", "--blocks", "6",
                          "--seed", "4", "--json"))
    blocks, texts = text_blocks(tokenizer, [WIKI_EXTRACTED], max_blocks=6)
    blocks = annotate(blocks, texts, _Matches(WIKI_ENTITIES, WIKI_CHUNKS))
    ref = _reference(blocks, specials, 6, seed=4, scheme="named_entity")
    assert r["given_span_fraction"] == pytest.approx(ref["given_span_fraction"], rel=1e-12)
    assert r["masked_fraction"] == pytest.approx(ref["masked_fraction"], rel=1e-12) and loads == [1]
    _stats(capsys, "--text", str(WIKI_EXTRACTED), "--blocks", "6", "--json")
    assert loads == [1]


def test_stats_tokenizer_without_a_special_token_is_named(tmp_path, capsys):
    from contract.tokenizer import bert_wordpiece

    path = tmp_path / "tokenizer.json"
    bert_wordpiece({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4}).save(str(path))
    status, _, err = _stats_cli(capsys, "--vocab", str(path), "--text", str(GUTENBERG / "blake-poems.txt"), "--blocks", "2")
    assert status == 2 and err.strip() == f"error: {path}: lacks special tokens ['[MASK]']"


def test_stats_rejects_what_the_pipeline_rejects(capsys):
    """masking.stats decodes text by the pipeline's rule (contract.text): the Latin-1 book is rejected with the
    pipeline's reason, reported on stderr and in the JSON, and never silently decoded; with nothing usable
    left it is one `error:` line and status 2; --encoding-fallback decodes it as the pipeline's flag does."""
    from masking.stats import main
    from pipeline.documents import CleanOptions, RawDocument, clean_document

    latin1, good = GUTENBERG / "chesterton-ball.txt", GUTENBERG / "blake-poems.txt"
    data = latin1.read_bytes()
    first_high = next(i for i, b in enumerate(data) if b >= 0x80)  # the book's non-ASCII bytes are Latin-1 singles
    dead = clean_document(RawDocument("b", "b", data, "text"), CleanOptions())
    assert (dead.reason, dead.detail.split(":")[0]) == ("invalid_utf8", f"invalid UTF-8 at byte {first_high}")

    def stats(*paths, extra=()) -> tuple[int, str, str]:
        return _stats_cli(capsys, "--vocab", str(VOCAB), "--blocks", "8", "--json", "--scheme", "subword",
                          "--text", *map(str, paths), *extra)

    (mixed, mixed_out, mixed_err), (alone, alone_out, _) = stats(latin1, good), stats(good)
    assert mixed == 0 and alone == 0
    assert mixed_err.strip() == f"rejected {latin1}: {dead.reason} ({dead.detail})"
    report, reference = json.loads(mixed_out), json.loads(alone_out)
    assert (report.pop("rejected"), report.pop("rejected_files")) == ({str(latin1): "invalid_utf8"}, 1)
    assert (reference.pop("rejected"), reference.pop("rejected_files")) == ({}, 0)
    assert report == reference  # the rejected book contributed nothing
    status, out, err = stats(latin1)
    assert (status, out, err.strip()) == (2, "", f"error: {latin1}: {dead.reason} ({dead.detail})")
    status, out, err = stats(latin1, latin1)
    assert status == 2 and err.strip() == f"error: {latin1}: {dead.reason} ({dead.detail}) (and 1 more files rejected)"
    status, out, _ = stats(latin1, extra=("--encoding-fallback", "latin-1"))
    assert status == 0 and json.loads(out)["rejected_files"] == 0 and json.loads(out)["blocks"] == 8
    capsys.readouterr()
    assert main(["--vocab", str(VOCAB), "--blocks", "8", "--text", str(latin1), str(good)]) == 0  # the table
    assert f"rejected files         1: {latin1} (invalid_utf8)" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("tokenizer_file", ["vocab.txt", "tokenizer.json"])
def test_stats_cli_reads_spans_from_shards(tmp_path, tokenizer, specials, capsys, tokenizer_file):
    """--shards: input_ids, word_start and the span columns of the shard contract (docs/pipeline.md, "The shard contract"), with the
    tokenizer file the manifest names (the pipeline writes both) checked against its recorded identity."""
    import hashlib

    from contract import schema
    from masking.corpus import annotate, text_blocks
    from tests.conftest import WIKI_EXTRACTED

    rows, texts = text_blocks(tokenizer, [WIKI_EXTRACTED], max_blocks=6)
    rows = annotate(rows, texts, _Matches(WIKI_ENTITIES, WIKI_CHUNKS))
    assert min(len(t.entity_spans) for t in rows) > 10 and min(len(t.noun_phrase_spans) for t in rows) > 10
    assert any("DATE" in t.entity_labels for t in rows)
    table = pa.table(
        {
            "input_ids": [t.input_ids.tolist() for t in rows],
            "word_start": [t.word_start.tolist() for t in rows],
            "entity_spans": [
                [
                    {"start": int(s), "end": int(e), "label": lab}
                    for (s, e), lab in zip(t.entity_spans, t.entity_labels, strict=True)
                ]
                for t in rows
            ],
            "noun_phrase_spans": [
                [{"start": int(s), "end": int(e)} for s, e in t.noun_phrase_spans] for t in rows
            ],
            "doc_id": ["wiki#1"] * len(rows),
            "block_index": list(range(len(rows))),
            "num_blocks": [len(rows)] * len(rows),
        },
        schema=schema.BLOCK_SCHEMA,
    )
    name = schema.shard_name(0, 1)
    with pa.OSFile(str(tmp_path / name), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    if tokenizer_file == schema.VOCAB_FILE:
        (tmp_path / tokenizer_file).write_bytes(VOCAB.read_bytes())
    else:
        tokenizer.save(str(tmp_path / tokenizer_file))
    tokens = VOCAB.read_text(encoding="utf-8").splitlines()
    counts = np.bincount(np.concatenate([t.input_ids for t in rows]), minlength=len(tokens))
    np.save(tmp_path / schema.UNIGRAM_FILE, counts)
    size, digest = schema.file_sha256(tmp_path / name)
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "block_size": 510,
        "tokenizer": {
            "file": tokenizer_file,
            "vocab_size": len(tokens),
            "vocab_sha256": hashlib.sha256("\n".join(tokens).encode()).hexdigest(),  # of the id-ordered tokens
            "vocab_file": schema.VOCAB_FILE,
        },
        "shards": [{"file": name, "rows": len(rows), "tokens": sum(len(t.input_ids) for t in rows), "bytes": size,
                    "sha256": digest}],
        "unigram_counts": schema.UNIGRAM_FILE,
    }
    (tmp_path / schema.MANIFEST).write_text(json.dumps(manifest))
    from masking.stats import main

    def stats(scheme: str, n_blocks: int) -> dict:
        capsys.readouterr()
        assert main(["--shards", str(tmp_path), "--scheme", scheme, "--blocks", str(n_blocks), "--json", "--seed", "2"]) == 0
        return json.loads(capsys.readouterr().out)

    for scheme, n_blocks in (("named_entity", 300), ("noun_phrase", 60), ("noun_phrase", 4)):
        r, ref = stats(scheme, n_blocks), _reference(rows, specials, n_blocks, seed=2, scheme=scheme)
        pieces = sum(len(rows[i % len(rows)].input_ids) for i in range(n_blocks))
        assert (r["blocks"], r["distinct_blocks"], r["pieces"]) == (n_blocks, min(n_blocks, len(rows)), pieces)
        for key in ("masked_fraction", "given_span_fraction", "spans_per_block", "sbo_targets_fraction"):
            assert r[key] == pytest.approx(ref[key], rel=1e-12), (scheme, key)
        assert 0.3 < r["given_span_fraction"] < 0.6  # about half the budget (linguistic_share 0.5), not none

    # Another tokenizer file than the manifest recorded (two tokens swapped: same size): refused, named.
    tokens[1000], tokens[1001] = tokens[1001], tokens[1000]
    (tmp_path / schema.VOCAB_FILE).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    manifest["tokenizer"]["file"] = schema.VOCAB_FILE
    (tmp_path / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(schema.ShardError, match="the manifest recorded") as err:
        main(["--shards", str(tmp_path), "--blocks", "6"])
    assert err.value.path == tmp_path / schema.VOCAB_FILE


def test_masker_pickles_for_dataloader_workers(wiki_blocks, make_masker):
    import pickle

    masker = make_masker("whole_word", seed=11)
    clone = pickle.loads(pickle.dumps(masker))
    t = wiki_blocks[3]
    a = masker.mask_block(Block(t.input_ids, t.word_start, 3), epoch=0)
    b = clone.mask_block(Block(t.input_ids, t.word_start, 3), epoch=0)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_same_mask_in_another_process(tmp_path, wiki_blocks, make_masker, specials):
    """Nothing process-local (hash seeds, global RNG state) leaks into a mask."""
    t = wiki_blocks[5]
    block = tmp_path / "block.npy"
    np.save(block, np.stack([t.input_ids, t.word_start.astype(np.int32)]))
    code = (
        "import numpy as np\n"
        "from masking import Block, Masker, MaskingConfig\n"
        f"ids, ws = np.load({str(block)!r})\n"
        f"m = Masker(MaskingConfig(seed=4), vocab_size=28996, mask_id={specials.mask}, special_ids={list(specials.specials)})\n"
        "print(m.mask_block(Block(ids.astype(np.int32), ws.astype(bool), 77), epoch=2).input_ids.tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    here = make_masker(seed=4).mask_block(Block(t.input_ids, t.word_start, 77), epoch=2)
    assert json.loads(out.stdout) == here.input_ids.tolist()


# -- given (entity / noun-phrase) spans through the public API, hand-worked: no spaCy --------------
# The spaCy-annotated tests (test_masking_statistics / _properties / _realised) check the share statistically
# on real text; here every number is worked out by hand from docs/masking.md, so a span that is dropped,
# not widened to whole words, kept although numeric, or handed to the wrong block shows.
#
# Block A: 30 pieces, every piece a word except piece 11 (a "##" continuation of piece 10). Its budget is
# round(0.15 · 30) = 5 pieces; the linguistic share is round(0.5 · 5) = 3. Its spans: [11, 13) PERSON —
# widened to the whole word at 10, so pieces 10, 11, 12 (3 pieces: 2 · 0 + 3 <= 2 · 3, taken) — and
# [20, 22) DATE (numeric: never a given span). The rest of the budget, 2 pieces, goes to random single words.

IDS_A = np.arange(1000, 1030, dtype=np.int32)
WS_A = np.ones(30, bool)
WS_A[11] = False
SPANS_A, LABELS_A = np.array([[11, 13], [20, 22]]), ["PERSON", "DATE"]
# Block B: 20 one-piece words, budget round(3.0) = 3, share round(2.0) = 2: [0, 2) ORG is taken whole
# (2 <= 2); [1, 3) GPE overlaps it and starts later, so it is dropped before the shuffle.
IDS_B = np.arange(2000, 2020, dtype=np.int32)
WS_B = np.ones(20, bool)
SPANS_B, LABELS_B = np.array([[1, 3], [0, 2]]), ["GPE", "ORG"]


def given_positions(mb) -> dict[int, int]:
    """position -> span id, for the pieces masked by a given span."""
    return {int(p): int(s) for p, s in zip(mb.mlm_positions, mb.mlm_span, strict=True) if s >= GIVEN_SPAN_ID}


def check_a(mb) -> None:
    assert given_positions(mb) == {10: GIVEN_SPAN_ID + 10, 11: GIVEN_SPAN_ID + 10, 12: GIVEN_SPAN_ID + 10}
    assert len(mb.mlm_positions) == 5  # the whole budget: 3 given + 2 random words
    assert (mb.mlm_labels == IDS_A[mb.mlm_positions]).all()


def check_b(mb) -> None:
    assert given_positions(mb) == {0: GIVEN_SPAN_ID + 0, 1: GIVEN_SPAN_ID + 0}
    assert len(mb.mlm_positions) == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_given_entity_span_is_widened_to_whole_words_and_numeric_ones_are_skipped(make_masker, seed):
    masker = make_masker("named_entity", seed=seed)
    mb = masker.mask_block(Block(IDS_A, WS_A, 4, entity_spans=SPANS_A, entity_labels=LABELS_A), epoch=0)
    check_a(mb)
    # With only the numeric mention, nothing is given: the budget goes to random words alone.
    only_date = masker.mask_block(Block(IDS_A, WS_A, 4, entity_spans=SPANS_A[1:], entity_labels=["DATE"]), epoch=0)
    assert given_positions(only_date) == {} and len(only_date.mlm_positions) == 5
    none = masker.mask_block(Block(IDS_A, WS_A, 4), epoch=0)
    assert given_positions(none) == {} and len(none.mlm_positions) == 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_given_noun_phrase_spans_need_no_labels(make_masker, seed):
    masker = make_masker("noun_phrase", seed=seed)
    # Entity spans are ignored by the noun-phrase scheme, and noun phrases carry no labels.
    mb = masker.mask_block(Block(IDS_A, WS_A, 4, noun_phrase_spans=SPANS_A[:1], entity_spans=SPANS_A[1:],
                                 entity_labels=["PERSON"]), epoch=0)
    check_a(mb)
    b = masker.mask_block(Block(IDS_B, WS_B, 9, noun_phrase_spans=SPANS_B), epoch=0)
    check_b(b)


@pytest.mark.parametrize(
    "bad, shown",
    [
        ([-1, 2], "[-1, 2)"),  # starts before the block (and ends inside it)
        ([len(IDS_A) - 1, len(IDS_A) + 1], f"[{len(IDS_A) - 1}, {len(IDS_A) + 1})"),  # ends past it (not empty)
        ([3, 3], "[3, 3)"),  # empty
    ],
)
def test_given_spans_outside_the_block_or_empty_are_refused_naming_the_first(make_masker, bad, shown):
    """A bad span is a caller's bug, named with its block and the block's length; the first bad one of a
    batch is the one named (block 2's, not block 3's)."""
    masker = make_masker("noun_phrase")
    good = np.array([[0, 1]])
    with pytest.raises(ValueError) as err:
        spans = [good, good, np.array([bad]), np.array([[-5, 0]])]
        masker.mask_batch([Block(IDS_A, WS_A, i, noun_phrase_spans=s) for i, s in enumerate(spans)], epoch=0)
    assert str(err.value) == (f"block 2: span {shown} is empty or outside its {len(IDS_A)} pieces; "
                              "spans are half-open piece offsets inside the bare block")


@pytest.mark.parametrize("scheme", ["named_entity", "noun_phrase"])
def test_given_spans_batch_hands_each_block_its_own(make_masker, scheme):
    """mask_batch / mask_flat over [A, nothing, B] equal the three blocks masked one at a time."""
    masker = make_masker(scheme, seed=5)
    ne = scheme == "named_entity"
    a = {"entity_spans": SPANS_A, "entity_labels": LABELS_A} if ne else {"noun_phrase_spans": SPANS_A}
    b = {"entity_spans": SPANS_B, "entity_labels": LABELS_B} if ne else {"noun_phrase_spans": SPANS_B}
    blocks = [Block(IDS_A, WS_A, 4, **a), Block(IDS_A, WS_A, 6), Block(IDS_B, WS_B, 9, **b)]
    batch = masker.mask_batch(blocks, epoch=1)
    check_a(batch[0])
    assert given_positions(batch[1]) == {} and len(batch[1].mlm_positions) == 5
    check_b(batch[2])
    for block, mb in zip(blocks, batch, strict=True):
        alone = masker.mask_block(block, epoch=1)
        assert alone.mlm_positions.tolist() == mb.mlm_positions.tolist()
        assert alone.mlm_span.tolist() == mb.mlm_span.tolist()
        assert alone.input_ids.tolist() == mb.input_ids.tolist()
    flat = masker.mask_flat(blocks, epoch=1)
    assert flat.mlm_positions.tolist() == np.concatenate([mb.mlm_positions for mb in batch]).tolist()


def test_given_spans_in_list_form_and_empty_span_arrays(make_masker):
    """Spans as plain lists are accepted; an empty array is no spans (not an error)."""
    masker = make_masker("named_entity", seed=3)
    mb = masker.mask_block(Block(IDS_A, WS_A, 4, entity_spans=[[11, 13]], entity_labels=["PERSON"]), epoch=0)
    check_a(mb)
    empty = masker.mask_block(Block(IDS_A, WS_A, 4, entity_spans=np.zeros((0, 2), np.int64), entity_labels=[]),
                              epoch=0)
    assert given_positions(empty) == {} and len(empty.mlm_positions) == 5


def _one_word_pieces(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(3000, 3000 + n, dtype=np.int32), np.ones(n, bool)


# Hand-worked (docs/masking.md): budget = round(0.15 · n) pieces; target = round(share · budget), halves up;
# a span of `cost` pieces with `before` already given is taken iff 2 · before + cost <= 2 · target (its
# midpoint within the target: the last span rounds to the nearer side) and before + cost <= budget.
@pytest.mark.parametrize(
    "n, budget, share, span, taken",
    [
        (20, 3, 0.5, [0, 3], True), # budget 3, target round(1.5) = 2 (half up): 3 <= 4, and 3 <= 3 exactly the budget
        (27, 4, 0.5, [0, 3], True), # budget 4, target 2: 3 <= 4 (a target of 1 would refuse it)
        (30, 5, 0.4, [0, 4], True), # budget 5, target 2: 4 <= 4 exactly, 4 < 5
        (30, 5, 0.4, [0, 5], False), # 5 > 4: nearer to the target without it
        (20, 3, 1.0, [0, 3], True), # budget 3, target 3: 3 <= 6, and exactly the whole budget
        (20, 3, 1.0, [0, 4], False), # 4 <= 6, but past the whole budget of 3
    ],
)
def test_given_span_taken_by_its_midpoint_and_never_past_the_budget(make_masker, n, budget, share, span, taken):
    ids, ws = _one_word_pieces(n)
    mb = make_masker("noun_phrase", seed=1, linguistic_share=share).mask_block(
        Block(ids, ws, 0, noun_phrase_spans=[span]), epoch=0)
    want = {p: GIVEN_SPAN_ID + span[0] for p in range(*span)} if taken else {}
    assert given_positions(mb) == want
    assert len(mb.mlm_positions) == budget  # the rest of the budget goes to random words


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_given_spans_starting_together_keep_the_longer_and_adjacent_ones_are_both_kept(make_masker, seed):
    """20 one-piece words: budget 3, target 2. [0, 1) and [0, 2) start at the same word: the longer is kept
    (listed second here, so input order cannot be what decides). [5, 6) and [6, 7) touch but do not
    overlap: both are kept, each its own span, in either shuffled order (1 <= 4, then 2 + 1 <= 4)."""
    ids, ws = _one_word_pieces(20)
    masker = make_masker("noun_phrase", seed=seed)
    same_start = masker.mask_block(Block(ids, ws, 0, noun_phrase_spans=[[0, 1], [0, 2]]), epoch=0)
    assert given_positions(same_start) == {0: GIVEN_SPAN_ID, 1: GIVEN_SPAN_ID}
    adjacent = masker.mask_block(Block(ids, ws, 0, noun_phrase_spans=[[6, 7], [5, 6]]), epoch=0)
    assert given_positions(adjacent) == {5: GIVEN_SPAN_ID + 5, 6: GIVEN_SPAN_ID + 6}


# -- validation boundaries, the output contract, hand-worked SBO targets -------------------------------


def test_config_accepts_its_boundaries_and_rejects_past_them():
    for ok in ({"geometric_p": 1.0}, {"max_span_words": 1}, {"random_prob": 0.0}, {"mask_prob": 0.0},
               {"linguistic_share": 0.0}, {"linguistic_share": 1.0}, {"max_sbo_targets": 1},
               {"mask_prob": 0.9, "random_prob": 0.1}):
        MaskingConfig(**ok)
    for bad, message in (
        ({"geometric_p": 1.5}, "geometric_p=1.5: must lie in (0, 1]; the paper uses 0.2"),
        ({"linguistic_share": 1.5}, "linguistic_share=1.5: must lie in [0, 1]; the paper uses 0.5"),
        ({"linguistic_share": -0.1}, "linguistic_share=-0.1: must lie in [0, 1]; the paper uses 0.5"),
        ({"mask_prob": 0.9, "random_prob": 0.2}, "mask_prob=0.9, random_prob=0.2: both must be >= 0 with a sum <= 1 "
                                                 "(the rest is kept unchanged); the paper uses 0.8 and 0.1"),
        ({"excluded_entity_labels": "DATE"}, "excluded_entity_labels: give a tuple of labels, not one string"),
    ):
        with pytest.raises(ValueError) as err:
            MaskingConfig(**bad)
        assert str(err.value) == message


def test_masker_and_replacer_validate_what_they_are_given():
    def masker(vocab_size=50, mask_id=3, special_ids=(0, 1, 2), **kw):
        return Masker(MaskingConfig(), vocab_size=vocab_size, mask_id=mask_id, special_ids=special_ids, **kw)

    assert masker().vocab_size == 50
    with pytest.raises(ValueError, match=r"^vocab_size=0: must be >= 1$"):
        masker(vocab_size=0, special_ids=(), mask_id=0)
    for special_ids in ((-1, 5), (1, 2, 50), (50,)):
        with pytest.raises(ValueError, match=r"^special ids \[.*\] must lie in \[0, 50\)$"):
            masker(special_ids=special_ids)
    counts = np.zeros(50)
    for bad, message in ((np.where(np.arange(50) == 7, -1.0, 1.0), "unigram_counts must be finite and non-negative"),
                         (np.where(np.arange(50) == 7, np.nan, 1.0), "unigram_counts must be finite and non-negative"),
                         (np.where(np.arange(50) == 7, np.inf, 1.0), "unigram_counts must be finite and non-negative"),
                         (counts, "unigram_counts gives no weight to any non-special id"),
                         (np.where(np.arange(50) < 4, 5.0, 0.0), "unigram_counts gives no weight to any non-special id")):
        with pytest.raises(ValueError) as err:
            masker(unigram_counts=bad)
        assert str(err.value) == message
    with pytest.raises(ValueError, match=r"^epoch and block indices must be >= 0$"):
        masker().mask_flat([Block(np.arange(5, 9), np.ones(4, bool), -1)], epoch=0)
    # One id with weight 1 (a total weight of 1) is a valid distribution: every random token is that id.
    one = Masker(MaskingConfig(mask_prob=0.0, random_prob=1.0), vocab_size=50, mask_id=3, special_ids=(0, 1, 2),
                 unigram_counts=np.where(np.arange(50) == 7, 1.0, 0.0))
    mb = one.mask_block(Block(np.arange(10, 50, dtype=np.int32), np.ones(40, bool), 0), epoch=0)
    assert len(mb.mlm_positions) == 6 and (mb.input_ids[mb.mlm_positions] == 7).all()


def test_output_ids_follow_each_positions_replacement(wiki_blocks, make_masker, specials):
    """[MASK] where the action is MASK, the original id where it is KEEP, a non-special id where RANDOM;
    every other position untouched; every array int32 (MaskedBlock's contract)."""
    from masking import KEEP, MASK, RANDOM

    out = make_masker("geometric", seed=2).mask_batch(keyed(wiki_blocks[:30]), epoch=0)
    special = np.zeros(28996, bool)
    special[list(specials.specials)] = True
    seen = set()
    for t, mb in zip(wiki_blocks[:30], out, strict=True):
        for f in fields(MaskedBlock):
            assert getattr(mb, f.name).dtype == np.int32, f.name
        pos, act = mb.mlm_positions, mb.mlm_replacement
        assert (mb.input_ids[pos[act == MASK]] == specials.mask).all()
        assert (mb.input_ids[pos[act == KEEP]] == t.input_ids[pos[act == KEEP]]).all()
        assert not special[mb.input_ids[pos[act == RANDOM]]].any()
        rest = np.ones(len(t.input_ids), bool)
        rest[pos] = False
        assert (mb.input_ids[rest] == t.input_ids[rest]).all()
        seen |= set(act.tolist())
    assert seen == {MASK, RANDOM, KEEP}


def test_a_block_of_special_pieces_gets_no_targets(make_masker, specials):
    """Last in its batch, a block with nothing maskable has empty MLM / SBO / span rows (its CSR offsets
    still close the batch)."""
    ids = [np.arange(1000, 1020, dtype=np.int32), np.array([specials.cls, specials.sep], np.int32)]
    a, b = make_masker().mask_batch([Block(ids[0], np.ones(20, bool), 0), Block(ids[1], np.ones(2, bool), 1)], epoch=0)
    assert len(a.mlm_positions) == 3 and len(a.sbo_positions) == 3
    assert len(b.mlm_positions) == len(b.sbo_positions) == len(b.spans) == 0
    assert b.input_ids.tolist() == ids[1].tolist()


@pytest.mark.parametrize("edge_spans", [True, False])
def test_merge_spans_hand_worked(edge_spans):
    """Two blocks of 10 and 6 pieces; masked: block 0 pieces 0 1 | 4 5 6 | 9, block 1 pieces 1 2.
    Merged runs [0, 2) [4, 7) [9, 10) and [1, 3); max_targets 2: the third piece of [4, 7) gets none;
    without edge spans, [0, 2) (left boundary -1, [CLS]) and [9, 10) (right boundary 10 = n, [SEP]) get none,
    while [1, 3) of block 1 (left boundary 0, a real piece) keeps its targets."""
    from masking.sbo import merge_spans

    block = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    pos = np.array([0, 1, 4, 5, 6, 9, 1, 2])
    t = merge_spans(np.array([10, 6]), block, pos, 2, edge_spans)
    assert (t.span_block.tolist(), t.span_start.tolist(), t.span_end.tolist()) == ([0, 0, 0, 1], [0, 4, 9, 1], [2, 7, 10, 3])
    assert t.rel.tolist() == [1, 2, 1, 2, 3, 1, 1, 2]
    assert t.left.tolist() == [-1, -1, 3, 3, 3, 8, 0, 0]
    assert t.right.tolist() == [2, 2, 7, 7, 7, 10, 3, 3]
    want = [1, 1, 1, 1, 0, 1, 1, 1] if edge_spans else [0, 0, 1, 1, 0, 0, 1, 1]
    assert t.select.tolist() == [bool(w) for w in want]
    empty = merge_spans(np.array([10]), np.zeros(0, np.int64), np.zeros(0, np.int64), 2, edge_spans)
    assert len(empty.span_start) == len(empty.span_end) == len(empty.select) == 0


def test_seed_is_a_64_bit_unsigned_int():
    for ok in (0, 2**63, 2**64 - 1, np.uint64(5), np.int64(7)):
        MaskingConfig(seed=ok)
    for bad in (2**64, 1.5, True, "3"):
        with pytest.raises(ValueError, match=r"must be an int in \[0, 2\*\*64\)$"):
            MaskingConfig(seed=bad)


def test_an_empty_batch_and_the_default_word_units(make_masker):
    from masking.layout import build_layout

    assert make_masker().mask_batch([], epoch=0) == []
    flat = make_masker().mask_flat([], epoch=0)
    assert len(flat) == 0 and flat.input_ids.dtype == np.int32 and len(flat.input_ids) == 0
    # Without every_piece_a_word, words come from word_start: [1000 ##1001 1002] is 2 words of 2 and 1 pieces.
    special = np.zeros(2000, bool)
    layout = build_layout([Block(np.array([1000, 1001, 1002]), np.array([1, 0, 1], bool), 0)], special, 0.15)
    assert layout.word_len.tolist() == [2, 1]


def test_empty_blocks_anywhere_in_a_batch_mask_as_they_do_alone(make_masker, real_blocks):
    """An empty block (a document's only block can be empty after cleaning) first, between and last in
    a batch: each block gets exactly what it gets on its own, and the empty ones get nothing."""
    masker = make_masker()
    empty_ids, empty_ws = np.zeros(0, np.int32), np.zeros(0, bool)
    tbs = real_blocks[:2]
    ids = [empty_ids, tbs[0].input_ids, empty_ids, tbs[1].input_ids, empty_ids]
    ws = [empty_ws, tbs[0].word_start, empty_ws, tbs[1].word_start, empty_ws]
    blocks = [Block(i, w, k) for k, (i, w) in enumerate(zip(ids, ws, strict=True))]
    batch = masker.mask_batch(blocks, epoch=1)
    for k in range(5):
        one = masker.mask_block(blocks[k], epoch=1)
        for f in fields(MaskedBlock):
            np.testing.assert_array_equal(getattr(batch[k], f.name), getattr(one, f.name), err_msg=f"{k} {f.name}")
    assert [len(batch[k].mlm_positions) for k in (0, 2, 4)] == [0, 0, 0]
    assert len(batch[1].mlm_positions) > 0 and len(batch[3].mlm_positions) > 0


def test_layout_words_and_budgets_hand_worked():
    """Budget = round half up of 0.15 x the block's non-special pieces, at least 1, and 0 with none; words
    begin at word starts, at each block's first piece, and at and after every special piece."""
    from masking.layout import build_layout

    special = np.zeros(2000, bool)
    special[[0, 101, 102]] = True  # [PAD] (id 0), [CLS], [SEP]
    blocks = [
        np.array([101, 1000, 1001, 1002, 102]),  # a special first piece, one word of 3 pieces, a special last
        np.array([1020, 1021, 1022]),  # round(0.45 + 0.5) = 0 -> at least 1
        np.array([1003]),  # one piece whose word_start says "continuation": a block still starts a word
        np.array([101] + list(range(1004, 1020)) + [102, 0, 1020]),  # 17 maskable of 20: round(2.55 + 0.5) = 3
        np.array([101, 102]),  # nothing maskable: budget 0
        np.arange(1030, 1050),  # 20 maskable: round(3.0 + 0.5) = 3
    ]
    starts = [np.array([1, 1, 0, 0, 1], bool), np.ones(3, bool), np.zeros(1, bool), np.ones(20, bool),
              np.ones(2, bool), np.ones(20, bool)]
    layout = build_layout([Block(b, s, i) for i, (b, s) in enumerate(zip(blocks, starts, strict=True))], special, 0.15)
    assert layout.budget.tolist() == [1, 1, 1, 3, 0, 3] and layout.budget.dtype == np.int64
    # [CLS] | 1000 ##1001 ##1002 | [SEP] || 1020 | 1021 | 1022 || 1003
    assert layout.word_len[:7].tolist() == [1, 3, 1, 1, 1, 1, 1]
    assert layout.n_candidates.tolist() == [1, 3, 1, 17, 0, 20]
    # Ids must index is_special: 0 ([PAD]) is an id; len(is_special) is not.
    build_layout([Block(np.array([0, 1000]), np.ones(2, bool), 0)], special, 0.15)
    with pytest.raises(ValueError, match="input_ids must lie in"):
        build_layout([Block(np.array([1000, 2000]), np.ones(2, bool), 0)], special, 0.15)


# -- masking.corpus: text -> blocks -> spans, hand-worked -------------------------------------------------


def test_corpus_reads_the_text_without_wikiextractor_tags_and_keeps_whole_lines(tmp_path, tokenizer):
    from masking.corpus import read_text, text_blocks

    wiki = tmp_path / "wiki.txt"
    wiki.write_text('<doc id="1" title="A">\nAlpha beta.\n</doc>\n<doc id="2">\nGamma <docs> delta. </doc>\n<docs> stay\n</doc>\n')
    assert read_text(wiki) == "Alpha beta.\nGamma <docs> delta. </doc>\n<docs> stay"  # only the tag lines go
    lines = tmp_path / "lines.txt"
    lines.write_text("one two\nthree four\nfive")
    # max_chars keeps whole lines up to the limit; a first line longer than the limit is cut hard.
    for max_chars, kept in ((12, "one two"), (17, "one two"), (18, "one two\nthree four"),
                            (23, "one two\nthree four\nfive"), (4, "one "), (None, "one two\nthree four\nfive")):
        blocks, texts = text_blocks(tokenizer, [lines], max_chars=max_chars)
        assert texts == [kept], max_chars
        enc = tokenizer.encode(kept, add_special_tokens=False)
        assert np.concatenate([b.input_ids for b in blocks]).tolist() == enc.ids
    starts_with_newline = tmp_path / "nl.txt"
    starts_with_newline.write_text("\nsix seven eight")
    assert text_blocks(tokenizer, [starts_with_newline], max_chars=6)[1] == ["\nsix s"]
    one_char_line = tmp_path / "short.txt"
    one_char_line.write_text("a\nbcdef ghi")
    assert text_blocks(tokenizer, [one_char_line], max_chars=5)[1] == ["a"]


def test_corpus_blocks_each_file_one_document_cut_at_words_and_stop_at_max_blocks(tmp_path, tokenizer):
    from masking.corpus import text_blocks

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Tokenization unbelievably splits words " * 3)
    b.write_text("Short text.")
    ids_a = tokenizer.encode(a.read_text(), add_special_tokens=False)
    blocks, texts = text_blocks(tokenizer, [a, b], max_pieces=7)
    assert texts == [a.read_text(), b.read_text()] and [t.doc for t in blocks].count(1) == 1
    mine = [t for t in blocks if t.doc == 0]
    assert np.concatenate([t.input_ids for t in mine]).tolist() == ids_a.ids  # nothing lost, in order
    assert all(0 < len(t.input_ids) <= 7 and t.word_start[0] for t in mine)  # never cuts inside a word
    offsets = np.concatenate([t.char_offsets for t in mine])
    assert offsets.tolist() == [list(o) for o in ids_a.offsets]
    assert np.concatenate([t.word_start for t in mine]).tolist() == [
        i == 0 or w != ids_a.word_ids[i - 1] for i, w in enumerate(ids_a.word_ids)]
    assert blocks[-1].input_ids.tolist() == tokenizer.encode("Short text.", add_special_tokens=False).ids
    long = tmp_path / "long.txt"
    long.write_text("word " * 600)  # one piece per word: blocks fill to the default 510 pieces exactly
    assert [len(t.input_ids) for t in text_blocks(tokenizer, [long])[0]] == [510, 90]
    first_two, _ = text_blocks(tokenizer, [a, b], max_pieces=7, max_blocks=2)
    assert [t.input_ids.tolist() for t in first_two] == [t.input_ids.tolist() for t in blocks[:2]]


def test_corpus_rejected_file_is_reported_or_raised_and_keeps_doc_numbers(tmp_path, tokenizer):
    from masking.corpus import RejectedText, text_blocks

    bad, good = tmp_path / "bad.txt", tmp_path / "good.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    good.write_text("Good text here.")
    with pytest.raises(RejectedText) as err:
        text_blocks(tokenizer, [bad, good])
    assert (err.value.path, err.value.reason) == (bad, "invalid_utf8")
    assert str(err.value) == f"{bad}: invalid_utf8 ({err.value.detail})" and "byte 3" in err.value.detail
    rejected: list = []
    blocks, texts = text_blocks(tokenizer, [bad, good], rejected=rejected)
    assert [r.path for r in rejected] == [bad] and texts == ["", "Good text here."]
    assert [t.doc for t in blocks] == [1]  # still the index into paths
    _, decoded = text_blocks(tokenizer, [bad], encoding_fallback="latin-1")
    assert decoded == ["café au lait"]


def test_corpus_annotate_keeps_the_spans_inside_each_block_as_pieces(tmp_path, tokenizer):
    """Entities and noun chunks found in the document land in each block that holds them wholly, as piece
    spans whose characters are exactly the mention, with their labels; one crossing a block edge is dropped."""
    from masking.corpus import annotate, text_blocks

    path = tmp_path / "doc.txt"
    path.write_text("Alice met Bob Smith in Paris.\nThe Queen of Hearts shouted at Alice.\nBob ran home")  # "home": the last character
    blocks, texts = text_blocks(tokenizer, [path], max_pieces=3)  # "Bob | Smith", "The Queen | of Hearts"
    entities = {"Alice": "PERSON", "Bob Smith": "PERSON", "Paris": "GPE", "Queen of Hearts": "PERSON", "Bob": "PERSON"}
    chunks = ("The Queen of Hearts", "Bob Smith", "home")
    blocks = annotate(blocks, texts, _Matches({re.escape(k): v for k, v in entities.items()}, tuple(map(re.escape, chunks))))
    text = texts[0]

    def inside(block, strings) -> set:
        lo, hi = int(block.char_offsets[0, 0]), int(block.char_offsets[-1, 1])
        found = {(i, i + len(m), m) for m in strings for i in range(len(text)) if text.startswith(m, i)}
        return {f for f in found if lo <= f[0] and f[1] <= hi}

    seen_entities = seen_chunks = 0
    for t in blocks:
        got = {(int(t.char_offsets[s, 0]), int(t.char_offsets[e - 1, 1]), lab)
               for (s, e), lab in zip(t.entity_spans, t.entity_labels, strict=True)}
        want = {(s, e, entities[m]) for s, e, m in inside(t, entities)}
        assert got == want
        got_chunks = {(int(t.char_offsets[s, 0]), int(t.char_offsets[e - 1, 1])) for s, e in t.noun_phrase_spans}
        assert got_chunks == {(s, e) for s, e, _ in inside(t, chunks)}
        seen_entities, seen_chunks = seen_entities + len(got), seen_chunks + len(got_chunks)
    everywhere = sum(text.count(m) for m in entities)
    assert 0 < seen_entities < everywhere  # some mentions kept, some cut by a block edge
    assert seen_chunks > 0


def test_corpus_annotate_hands_over_exactly_the_lines_the_blocks_cover(tmp_path, tokenizer):
    """spaCy sees whole lines: those holding the pieces of the document's blocks at hand (what the pipeline
    would see of them), one call per document; an empty block is skipped without ending the loop."""
    from masking.corpus import TextBlock, annotate, text_blocks

    lines = ["Alice met Bob Smith in Paris.", "The Queen of Hearts shouted at Alice.", "Bob ran home.", "The end."]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(lines))
    b.write_text("\nRed Queen and White Knight.\n")  # a document starting with an empty line
    blocks, texts = text_blocks(tokenizer, [a, b], max_pieces=3)  # blocks such as ".\nThe Queen": across lines
    doc_a = [t for t in blocks if t.doc == 0]
    empty = TextBlock(np.zeros(0, np.int32), np.zeros(0, bool), 0, char_offsets=np.zeros((0, 2), np.int64), doc=0)

    def line(char: int) -> int:
        return texts[0].count("\n", 0, char)

    for size in (1, 2, 3):
        for i in range(len(doc_a) - size + 1):
            window = doc_a[i : i + size]
            nlp = _Matches({}, ())
            annotate([empty, *window, *[t for t in blocks if t.doc == 1]], texts, nlp)
            first, last = line(int(window[0].char_offsets[0, 0])), line(int(window[-1].char_offsets[-1, 0]))
            assert nlp.texts == ["\n".join(lines[first : last + 1]), "Red Queen and White Knight."], (size, i)
    nlp = _Matches({}, ())
    annotate([empty, *[t for t in blocks if t.doc == 1]], texts, nlp)  # document 0: only an empty block
    assert nlp.texts == ["Red Queen and White Knight."]
    crossing = [t for t in doc_a if line(int(t.char_offsets[0, 0])) != line(int(t.char_offsets[-1, 0]))]
    assert crossing  # the windows above include blocks that start or end on another line than their neighbour


# -- masking.stats' table and figure, from a hand-built report ---------------------------------------------
REPORT = {
    "scheme": "geometric", "seed": 7, "blocks": 12, "distinct_blocks": 3, "pieces": 6120,
    "masked_fraction": 0.15, "replacement": {"mask": 0.8, "random": 0.12, "keep": 0.08},
    "spans_per_block": 16.5, "mean_span_words": 3.6, "mean_span_pieces": 4.25, "sbo_targets_fraction": 0.875,
    "mean_sampled_span_words": 3.75, "paper_mean": 3.8, "sampled_tv_to_paper": 0.0123,
    "mean_unmerged_span_words": 3.7, "given_span_fraction": 0.5, "rejected_files": 1,
    "rejected": {"bad.txt": "invalid_utf8"},
    "paper_p": {"1": 0.2, "2": 0.16, "3": 0.128}, "sampled_span_length_hist": {"1": 0.25, "3": 0.75},
    "span_length_words_hist": {"1": 0.5, "3": 0.5}, "span_length_pieces_hist": {"2": 0.4, "4": 0.6},
}


def test_stats_table_hand_written():
    from masking.stats import format_table

    assert format_table(REPORT).splitlines() == [
        "scheme geometric  seed 7  blocks 12 (3 distinct)  pieces 6120",
        "masked fraction        0.1500",
        "replacement            mask 0.800  random 0.120  keep 0.080",
        "merged spans / block   16.50",
        "mean merged span       3.600 words, 4.250 pieces",
        "SBO targets / masked   0.8750",
        "mean sampled ℓ         3.750 (paper P: 3.800), TV to P 0.0123",
        "mean span before merge 3.700 words",
        "from given spans       0.5000",
        "rejected files         1: bad.txt (invalid_utf8)",
        "",
        # columns: ℓ 3 wide, then 8, 8, 15, 16, one space apart
        "  ℓ  paper P  sampled  merged (words)  merged (pieces)",
        "  1   0.2000   0.2500          0.5000           0.0000",
        "  2   0.1600   0.0000          0.0000           0.4000",
        "  3   0.1280   0.7500          0.5000           0.0000",
    ]
    # Without the optional figures (a scheme with no sampled lengths, no given spans, nothing rejected) their
    # lines are absent; the rows stop at the longest merged span, and at 20.
    bare = {k: v for k, v in REPORT.items() if k not in (
        "mean_sampled_span_words", "given_span_fraction", "sampled_span_length_hist")}
    bare.update(rejected_files=0, rejected={}, span_length_words_hist={"1": 0.5, "25": 0.5})
    lines = format_table(bare).splitlines()
    assert lines[:6] == format_table(REPORT).splitlines()[:6] and lines[6] == ""
    assert [line.split()[0] for line in lines[8:]] == [str(i) for i in range(1, 21)]
    assert lines[8] == "  1   0.2000   0.0000          0.5000           0.0000"
    assert lines[8 + 10] == " 11   0.0000   0.0000          0.0000           0.0000"  # past P(ℓ)'s 10 lengths
    two = dict(REPORT, rejected_files=2, rejected={"a.txt": "invalid_utf8", "b.txt": "invalid_utf8"})
    assert "rejected files         2: a.txt (invalid_utf8), b.txt (invalid_utf8)" in format_table(two).splitlines()
    empty = dict(bare, span_length_words_hist={})
    assert format_table(empty).splitlines()[-1] == "  1   0.2000   0.0000          0.0000           0.0000"


def test_stats_figure_draws_the_reports_numbers(tmp_path, monkeypatch):
    """The PNG compares P(ℓ), the sampled and the merged span lengths in words (bars side by side) and shows
    the merged lengths in pieces; read back from the figure itself."""
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from masking.stats import plot

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig) or close(fig))
    out = tmp_path / "fig.png"
    plot(REPORT, out)
    (fig,) = figures
    assert matplotlib.get_backend().lower() == "agg"
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1320, 495)  # 12 x 4.5 in, 110 dpi
    ax, bx = fig.axes
    assert ax.get_position().x1 < bx.get_position().x0  # side by side, words left
    ell = np.arange(1, 16)
    expect = [  # (bar centres, heights, colour, legend)
        (ell - 0.27, [0.2, 0.16, 0.128] + [0] * 12, "0.3", "paper P(ℓ) (mean 3.800)"),
        (ell, [0.25, 0, 0.75] + [0] * 12, "tab:blue", "sampled ℓ (mean 3.750)"),
        (ell + 0.27, [0.5, 0, 0.5] + [0] * 12, "tab:orange", "merged spans (mean 3.600)"),
    ]
    assert len(ax.containers) == 3
    for bars, (centres, heights, colour, label) in zip(ax.containers, expect, strict=True):
        assert [b.get_x() + b.get_width() / 2 for b in bars] == pytest.approx(centres)
        assert [b.get_width() for b in bars] == pytest.approx([0.27] * 15)
        assert [b.get_height() for b in bars] == pytest.approx(heights)
        assert all(b.get_facecolor() == to_rgba(colour) for b in bars) and bars.get_label() == label
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [e[3] for e in expect]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("span length (words)", "fraction of spans")
    assert ax.get_title() == "geometric: span length in words, 12 blocks"
    assert ax.get_xticks().tolist() == ell.tolist()
    (pieces,) = bx.containers
    assert [b.get_x() + b.get_width() / 2 for b in pieces] == pytest.approx(np.arange(1, 31))
    assert [b.get_height() for b in pieces] == pytest.approx([0, 0.4, 0, 0.6] + [0] * 26)
    assert all(b.get_facecolor() == to_rgba("tab:green") for b in pieces)
    assert (bx.get_xlabel(), bx.get_ylabel()) == ("merged span length (pieces)", "fraction of spans")
    assert bx.get_title() == "pieces (mean 4.25); masked fraction 0.1500"
    # Without sampled lengths (not the geometric scheme): two series.
    figures.clear()
    plot({k: v for k, v in REPORT.items() if k != "sampled_span_length_hist"}, out)
    assert [c.get_label() for c in figures[0].axes[0].containers] == [expect[0][3], expect[2][3]]


@pytest.mark.parametrize("breaks_at", ["write", "flush"])
def test_stats_reader_gone_is_quiet(tmp_path, monkeypatch, breaks_at):
    """`python -m masking.stats ... | head`: the reader leaves, the report's write or its flush (it is flushed
    inside the guard) hits a broken pipe; stdout is pointed at /dev/null (nothing more to say, no
    "Exception ignored" at exit) and the status stays 0."""
    from masking.stats import main

    fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)

    class GoneReader:
        def write(self, text: str) -> int:
            if breaks_at == "write":
                raise BrokenPipeError
            return len(text)

        def flush(self) -> None:
            raise BrokenPipeError

        def fileno(self) -> int:
            return fd

    monkeypatch.setattr(sys, "stdout", GoneReader())
    try:
        assert main(["--vocab", str(VOCAB), "--text", str(GUTENBERG / "blake-poems.txt"), "--blocks", "2"]) == 0
        now, devnull = os.fstat(fd), os.stat(os.devnull)
        assert (now.st_dev, now.st_ino, now.st_rdev) == (devnull.st_dev, devnull.st_ino, devnull.st_rdev)
    finally:
        os.close(fd)


def test_stats_usage_errors_name_the_command_and_the_fix(tmp_path, capsys):
    def error(*argv: str) -> str:
        status, _, err = _stats_cli(capsys, *argv)
        assert status == 2
        return err.strip()

    book = str(GUTENBERG / "blake-poems.txt")
    usage = "(see python -m masking.stats --help)"
    assert error("--text", book) == f"error: python -m masking.stats: --text needs --vocab {usage}"
    assert error("--vocab", str(VOCAB)) == (
        f"error: python -m masking.stats: one of the arguments --text --shards is required {usage}")
    assert error("--text", book, "--shards", str(tmp_path), "--vocab", str(VOCAB)).startswith(
        "error: python -m masking.stats: argument --shards: not allowed with argument --text")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert error("--vocab", str(VOCAB), "--text", str(empty)) == "error: no blocks: the input is empty"


def test_stats_of_a_one_piece_text_hand_worked(tmp_path, capsys, monkeypatch):
    """"Paris": one piece, so a budget of max(1, round(0.15)) = 1 piece; every figure is worked out by hand."""
    import contract.annotate

    path = tmp_path / "one.txt"
    path.write_text("Paris")
    for seed in (0, 1):
        r = json.loads(_stats(capsys, "--text", str(path), "--blocks", "1", "--seed", str(seed), "--json"))
        assert (r["pieces"], r["masked_fraction"], r["spans_per_block"]) == (1, 1.0, 1.0)
        assert (r["mean_span_words"], r["mean_span_pieces"], r["sbo_targets_fraction"]) == (1.0, 1.0, 1.0)
        assert r["span_length_words_hist"] == {"1": 1.0} and sorted(r["replacement"].values()) == [0.0, 0.0, 1.0]
        (ell,) = r["sampled_span_length_hist"]  # one span drawn: TV = (1 - P(ℓ) + the rest) / 2 = 1 - P(ℓ)
        assert r["sampled_tv_to_paper"] == pytest.approx(1 - _paper_p()[ell], rel=1e-12)
    monkeypatch.setattr(contract.annotate, "load_nlp", lambda: _Matches({"Paris": "GPE"}, ()))
    r = json.loads(_stats(capsys, "--text", str(path), "--blocks", "1", "--scheme", "named_entity", "--json"))
    assert r["given_span_fraction"] == 1.0  # target round(0.5 · 1) = 1: the mention is the whole budget


def test_stats_measure_at_epoch_0_and_of_blocks_with_nothing_to_mask(specials, make_masker, tokenizer):
    from masking.corpus import TextBlock, text_blocks
    from masking.stats import measure

    blocks, _ = text_blocks(tokenizer, [GUTENBERG / "blake-poems.txt"], max_blocks=20)
    r = measure(make_masker(seed=5), blocks, 20)  # the epoch left to its default: the first
    assert r["spans_per_block"] == pytest.approx(_reference(blocks, specials, 20, seed=5)["spans_per_block"], rel=1e-12)
    only_specials = TextBlock(np.full(8, specials.unk, np.int32), np.ones(8, bool), 0,
                              char_offsets=np.zeros((8, 2), np.int64), doc=0)
    r = measure(make_masker(), [only_specials], 3)
    assert (r["pieces"], r["masked_fraction"], r["spans_per_block"], r["sbo_targets_fraction"]) == (24, 0.0, 0.0, 0.0)
    assert (r["mean_span_words"], r["mean_span_pieces"], r["mean_sampled_span_words"]) == (0.0, 0.0, 0.0)
    assert r["replacement"] == {"mask": 0.0, "random": 0.0, "keep": 0.0} and r["span_length_words_hist"] == {}


def test_stats_options_defaults_and_help(tmp_path, capsys, tokenizer, specials):
    """The defaults (2,000 blocks, seed 0, epoch 0, geometric), --epoch reaching the masks, a scheme outside
    the five refused by the parser, and every option explained under the module's one-line summary."""
    from masking import stats
    from masking.corpus import text_blocks

    path = tmp_path / "one.txt"
    path.write_text("Paris")
    r = json.loads(_stats(capsys, "--text", str(path), "--json"))
    assert (r["blocks"], r["seed"], r["scheme"]) == (2000, 0, "geometric")
    book = GUTENBERG / "blake-poems.txt"
    blocks, _ = text_blocks(tokenizer, [book], max_blocks=20)
    for epoch in (0, 1):
        r = json.loads(_stats(capsys, "--text", str(book), "--blocks", "20", "--epoch", str(epoch), "--json"))
        ref = _reference(blocks, specials, 20, seed=0, epoch=epoch)
        assert r["spans_per_block"] == pytest.approx(ref["spans_per_block"], rel=1e-12)
    assert ref["spans_per_block"] != _reference(blocks, specials, 20, seed=0)["spans_per_block"]
    status, _, err = _stats_cli(capsys, "--text", str(path), "--vocab", str(VOCAB), "--scheme", "span")
    assert status == 2
    assert "argument --scheme: invalid choice: 'span' (choose from" in err and all(x in err for x in SCHEMES)
    parser = stats._parser()
    assert parser.prog == "python -m masking.stats"
    assert parser.description == stats.__doc__.splitlines()[0] and parser.description.startswith("`python -m")
    text = parser.format_help()
    for action in parser._actions:
        assert action.help and " ".join(action.help.split()) in " ".join(text.split()), action.dest
    assert "--encoding-fallback CODEC" in text
