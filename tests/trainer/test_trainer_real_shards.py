"""The trainer on what `python -m pipeline` really writes: tokenizer.json in the manifest, empty shards,
shards of several Arrow record batches. Checked against references outside the trainer: the GUIDE's
bert-base-cased ids and a plain tokenisation of the input text."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from contract.schema import read_manifest
from pipeline.documents import FRAMERS, CleanOptions, Document, clean_document
from pipeline.inputs import source_base
from pipeline.shards import ROWS_PER_BATCH
from tests.trainer.conftest import stream_of
from tests.trainer.shards import write_shards
from trainer.config import DataConfig
from trainer.data import ShardSet


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory) -> Path:
    """One full Wikipedia article (13.5k pieces) and one Alice chapter in 10-piece blocks over 3 shards:
    the article's shard holds more than one record batch, and 2 documents leave a shard empty."""
    return write_shards(tmp_path_factory.mktemp("long") / "shards", num_docs=2, block_size=12, num_shards=3,
                        max_chars=100_000)


def _record_batches(path: Path) -> int:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).num_record_batches


def _input_documents(shards: Path) -> dict[str, str]:
    """doc_id -> cleaned text of the pipeline's input files (`write_shards` puts them beside the shards),
    framed and cleaned outside Beam."""
    root = shards.parent / f"{shards.name}-input"
    out = {}
    for fmt, pattern in (("wikiextractor", f"{root}/wiki.txt"), ("text", f"{root}/alice/*.txt")):
        base = source_base(pattern)
        for path in sorted(root.glob(pattern[len(str(root)) + 1 :])):
            with open(path, "rb") as f:
                for raw in FRAMERS[fmt](f, str(path)[len(base) :]):
                    doc = clean_document(raw, CleanOptions())
                    assert isinstance(doc, Document), doc
                    out[doc.doc_id] = doc.text
    return out


def test_trainer_reads_every_block_of_real_shards_in_order(long_shards, tokenizer):
    m = read_manifest(long_shards)
    rows = [s.rows for s in m.shards]
    assert 0 in rows, rows  # an empty shard ...
    assert max(_record_batches(p) for p in m.shard_paths) > 1 and max(rows) > ROWS_PER_BATCH  # ... and a multi-batch one
    shards = ShardSet(long_shards)
    assert len(shards) == sum(rows) == m.manifest.totals.blocks
    by_doc: dict[str, list[int]] = defaultdict(list)
    for row in range(len(shards)):
        by_doc[shards.doc_id(row)].append(row)
    texts = _input_documents(long_shards)
    assert set(by_doc) == set(texts) and len(texts) == 2
    for doc_id, doc_rows in by_doc.items():
        assert doc_rows == list(range(doc_rows[0], doc_rows[-1] + 1))  # a document's blocks are consecutive rows
        ids = np.concatenate([shards.ids(r)[0] for r in doc_rows])
        starts = np.concatenate([shards.ids(r)[1] for r in doc_rows])
        enc = tokenizer.encode(texts[doc_id], add_special_tokens=False)
        word = np.array([-1 if w is None else w for w in enc.word_ids])
        assert ids.tolist() == enc.ids, doc_id  # every piece of the document, in order, nothing else
        assert starts.tolist() == [True, *(word[1:] != word[:-1]).tolist()], doc_id
        assert all(1 <= len(shards.ids(r)[0]) <= 10 for r in doc_rows)


def test_vocabulary_is_the_manifests_tokenizer_json(shard_dir, vocab_path):
    manifest = read_manifest(shard_dir)
    assert manifest.tokenizer_path.name == "tokenizer.json"  # what the pipeline names, not a vocab.txt
    stream = stream_of(shard_dir, DataConfig(batch_size=4, num_workers=0), max_len=64, max_sbo_targets=15, seed=0)
    v = stream.vocab
    # bert-base-cased as the GUIDE gives it: 28,996 pieces, [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103.
    assert v.size == len(vocab_path.read_text(encoding="utf-8").splitlines()) == 28_996
    assert (v.pad, v.cls, v.sep, v.mask) == (0, 101, 102, 103) and {0, 100, 101, 102, 103} <= set(v.specials)
    batch = stream.collate(0, np.arange(4))
    assert batch["input_ids"][:, 0].tolist() == [101] * 4
