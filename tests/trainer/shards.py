"""Contract-shaped shard directories from real text, for the trainer's tests (GUIDE §3).

A small stand-in for `python -m pipeline`: real Wikipedia articles and Gutenberg books, tokenized with
the shared tokenizer, cut by the shared block builder, written with the shared schema. Spans are
simple but well-formed: entity spans are runs of capitalised words (label ORG) and numbers (label
CARDINAL); noun-phrase spans are every word pair starting with "the"/"a". The lead will later point
the tests at real pipeline output.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.blocks import cut_blocks
from pipeline.schema import BLOCK_SCHEMA, MANIFEST, UNIGRAM_FILE, VOCAB_FILE, shard_name
from pipeline.tokenizer import vocab_sha256, wordpiece_from_vocab

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
VOCAB = SHARED / "vocab" / "bert-base-cased-vocab.txt"
WIKI = SHARED / "wiki" / "enwiki-sample-extracted.txt"
BOOK = SHARED / "books" / "gutenberg" / "carroll-alice.txt"


def read_documents(max_docs: int, max_chars: int = 6000) -> list[tuple[str, str]]:
    """(doc_id, text): Wikipedia articles, then chapters of a Gutenberg book."""
    docs = []
    wiki = WIKI.read_text(encoding="utf-8")
    for m in re.finditer(r'<doc id="(\d+)"[^>]*title="([^"]*)">\n(.*?)</doc>', wiki, flags=re.S):
        docs.append((f"enwiki#{m.group(1)}", m.group(3)[:max_chars]))
        if len(docs) >= max_docs // 2:
            break
    book = BOOK.read_text(encoding="utf-8")
    for k, chapter in enumerate(re.split(r"\nCHAPTER ", book)[1:]):
        docs.append((f"alice#{k}", chapter[:max_chars]))
        if len(docs) >= max_docs:
            break
    return docs


def _spans(words: list[tuple[int, int]], tokens: list[str]) -> tuple[list[dict], list[dict]]:
    entities, phrases = [], []
    i = 0
    while i < len(words):
        s, e = words[i]
        text = "".join(t.removeprefix("##") for t in tokens[s:e])
        if text[:1].isupper() or text.isdigit():
            j = i
            while j + 1 < len(words) and "".join(t.removeprefix("##") for t in tokens[words[j + 1][0] : words[j + 1][1]])[:1].isupper():
                j += 1
            entities.append({"start": s, "end": words[j][1], "label": "CARDINAL" if text.isdigit() else "ORG"})
            i = j + 1
            continue
        if text.lower() in ("the", "a") and i + 1 < len(words):
            phrases.append({"start": s, "end": words[i + 1][1]})
        i += 1
    return entities, phrases


def write_shards(out: Path, *, num_docs: int = 12, block_size: int = 128, num_shards: int = 2,
                 max_chars: int = 6000) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = wordpiece_from_vocab(VOCAB)
    rows = []
    for doc_id, text in read_documents(num_docs, max_chars):
        enc = tok.encode(text)
        ids = np.array(enc.ids, dtype=np.int32)
        word_ids = enc.word_ids
        word_start = np.array([w is not None and (k == 0 or word_ids[k - 1] != w) for k, w in enumerate(word_ids)])
        blocks = cut_blocks(word_start, None, block_size - 2)  # block_size counts [CLS] and [SEP], as the pipeline's
        for b, (s, e) in enumerate(blocks):
            ws = word_start[s:e]
            starts = list(np.flatnonzero(ws)) + [e - s]
            words = [(int(starts[k]), int(starts[k + 1])) for k in range(len(starts) - 1)]
            ents, nps = _spans(words, enc.tokens[s:e])
            rows.append({
                "input_ids": ids[s:e].tolist(), "word_start": ws.tolist(), "entity_spans": ents,
                "noun_phrase_spans": nps, "doc_id": doc_id, "block_index": b, "num_blocks": len(blocks),
            })
    vocab_size = tok.get_vocab_size()
    counts = np.zeros(vocab_size, dtype=np.int64)
    shards = []
    for k in range(num_shards):
        part = rows[k::num_shards]
        table = pa.Table.from_pylist(part, schema=BLOCK_SCHEMA)
        name = shard_name(k, num_shards)
        with pa.OSFile(str(out / name), "wb") as f, pa.ipc.new_file(f, BLOCK_SCHEMA) as writer:
            writer.write_table(table, max_chunksize=7)  # several record batches per shard, as a real writer
        tokens = sum(len(r["input_ids"]) for r in part)
        for r in part:
            np.add.at(counts, r["input_ids"], 1)
        shards.append({"file": name, "rows": len(part), "tokens": tokens,
                       "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()})
    np.save(out / UNIGRAM_FILE, counts)
    (out / VOCAB_FILE).write_text(VOCAB.read_text(encoding="utf-8"), encoding="utf-8")
    manifest = {
        "format_version": 1, "block_size": block_size,
        "tokenizer": {"file": VOCAB_FILE, "vocab_sha256": vocab_sha256(tok), "vocab_size": vocab_size},
        "shards": shards, "unigram_counts": UNIGRAM_FILE,
        "totals": {"blocks": len(rows), "tokens": int(counts.sum())},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out
