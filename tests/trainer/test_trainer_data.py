"""The batch stream: exactly-once epochs over ranks x workers, exact resume, masks and SBO targets in
full-sequence coordinates, batching, the bi-sequence + NSP mode, the vocabulary and tokenizer checks, and
batches pinned bit for bit."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from contract.cli import run_main
from contract.schema import BLOCK_SCHEMA, MANIFEST, ShardError, file_sha256, read_manifest
from masking import MaskingConfig
from tests.trainer.conftest import stream_of
from tests.trainer.shards import write_shards
from trainer.__main__ import main
from trainer.config import DataConfig
from trainer.data import IS_NEXT, NOT_NEXT, Batch, BlockStream, build_loader
from trainer.model import IGNORE


def _stream(shard_dir, rank=0, world=1, start=0, scheme="geometric", objective="mlm+sbo", **data) -> BlockStream:
    cfg = DataConfig(**{"batch_size": 4, "num_workers": 0, "masking": MaskingConfig(scheme=scheme), **data})
    return stream_of(shard_dir, cfg, max_len=64, max_sbo_targets=15, seed=7, rank=rank, world=world, start=start,
                       objective=objective)


def _take(stream: BlockStream, n: int, workers: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(build_loader(stream, workers, pin_memory=False), n))


@pytest.mark.parametrize("batching", [{"batch_size": 3}, {"batch_tokens": 200, "bucket_window": 4},
                                      {"step_tokens": 512, "pad_to_multiple": 16, "bucket_window": 4}])
def test_every_block_exactly_once_per_epoch_over_2_ranks_x_2_workers(shard_dir, batching):
    world, workers = 2, 2
    streams = [_stream(shard_dir, rank=r, world=world, **batching) for r in range(world)]
    n_rows, per_epoch = len(streams[0].shards), len(streams[0].plan.epoch(0))
    rounds = per_epoch // world + 2  # every rank runs into epoch 1
    seen = Counter()
    for s in streams:
        for b in _take(s, rounds, workers):
            for row, epoch in zip(b["row_ids"].tolist(), b["epoch"].tolist(), strict=True):
                seen[(epoch, row)] += 1
    epoch0 = sorted(row for (e, row), c in seen.items() if e == 0)
    assert epoch0 == list(range(n_rows))
    assert set(seen.values()) == {1}
    # epoch 1 is a different order of the same rows
    assert [r.tolist() for r in streams[0].plan.epoch(0)] != [r.tolist() for r in streams[0].plan.epoch(1)]


def test_resume_at_a_position_gives_the_same_stream(shard_dir):
    world = 2
    full = [_take(_stream(shard_dir, rank=r, world=world), 12, workers=2) for r in range(world)]
    start = 10  # global batches consumed, e.g. 5 steps x 1 micro-batch x 2 ranks
    resumed = [_take(_stream(shard_dir, rank=r, world=world, start=start), 7, workers=1) for r in range(world)]
    for r in range(world):
        for a, b in zip(full[r][start // world :], resumed[r], strict=True):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match="multiple of the world size"):
        _stream(shard_dir, world=2, start=3)


@pytest.mark.parametrize("scheme", ["geometric", "subword", "whole_word", "named_entity", "noun_phrase"])
def test_masks_and_sbo_targets_in_sequence_coordinates(shard_dir, scheme):
    stream = _stream(shard_dir, scheme=scheme)
    n_sbo = 0
    for b in _take(stream, 6, workers=0):
        ids, pad = b["input_ids"], b.get("attention_mask", torch.ones_like(b["input_ids"], dtype=torch.bool))
        for i, row in enumerate(b["row_ids"].tolist()):
            bare, _ = stream.shards.ids(row)
            n = len(bare)
            original = np.concatenate([[101], bare, [102]])
            assert ids[i, 0] == 101 and ids[i, n + 1] == 102 and pad[i].sum() == n + 2
            valid = b["mlm_labels"][i] != IGNORE
            pos = b["mlm_positions"][i][valid]
            assert ((pos >= 1) & (pos <= n)).all()  # never [CLS], [SEP] or padding
            assert np.array_equal(b["mlm_labels"][i][valid].numpy(), original[pos.numpy()])
            unchanged = ids[i].numpy() == np.pad(original, (0, ids.shape[1] - n - 2))
            unchanged[pos.numpy()] = True
            assert unchanged.all()  # only masked positions differ from the block
            masked = set(pos.tolist())
            sv = b["sbo_labels"][i] != IGNORE
            for left, right, rel, label in zip(b["sbo_left"][i][sv].tolist(), b["sbo_right"][i][sv].tolist(),
                                               b["sbo_rel"][i][sv].tolist(), b["sbo_labels"][i][sv].tolist(), strict=True):
                target = left + rel
                assert target in masked and label == original[target]  # SBO targets are masked tokens
                assert all(p in masked for p in range(left + 1, right))  # the whole span is masked
                assert left not in masked and right not in masked  # its boundaries are not
                assert 0 <= left and right <= n + 1 and 1 <= rel <= 15
                n_sbo += 1
    assert n_sbo > 20


def test_token_budget_batches_and_bucketing(shard_dir):
    stream = _stream(shard_dir, batch_tokens=256, bucket_window=8)
    lengths = stream.plan.seq_lengths
    for rows in stream.plan.epoch(0):
        width = -(-int(lengths[rows].max()) // 8) * 8
        assert len(rows) * width <= 256 or len(rows) == 1
    fixed = _stream(shard_dir, batch_size=4, bucket_window=8)
    waste = [1 - lengths[r].sum() / (len(r) * lengths[r].max()) for r in fixed.plan.epoch(0)]
    assert np.mean(waste) < 0.05  # length-sorted windows leave little padding


@pytest.mark.parametrize("scheme", ["geometric", "named_entity"])
def test_pair_mode_segments_and_nsp(shard_dir, scheme):
    stream = _stream(shard_dir, objective="mlm+nsp", batch_size=8, scheme=scheme)
    labels = []
    for b in _take(stream, 8, workers=0):
        for i, row in enumerate(b["row_ids"].tolist()):
            ids, tt = b["input_ids"][i], b["token_type_ids"][i]
            seps = (ids == 102).nonzero().flatten().tolist()
            assert ids[0] == 101 and len(seps) == 2
            a_end, b_end = seps
            assert (tt[: a_end + 1] == 0).all() and (tt[a_end + 1 : b_end + 1] == 1).all()
            pos = b["mlm_positions"][i][b["mlm_labels"][i] != IGNORE]
            assert not set(pos.tolist()) & {0, a_end, b_end}
            if b["nsp_labels"][i] == IS_NEXT:  # B continues A inside the same block (unmasked tokens agree)
                bare, _ = stream.shards.ids(row)
                seq = np.concatenate([ids[1:a_end].numpy(), ids[a_end + 1 : b_end].numpy()])
                keep = np.ones(len(seq), bool)
                keep[[p - 1 if p < a_end else p - 2 for p in pos.tolist()]] = False
                assert np.array_equal(seq[keep], bare[: len(seq)][keep])
            labels.append(int(b["nsp_labels"][i]))
    assert 0.3 < np.mean(np.array(labels) == NOT_NEXT) < 0.7


def test_pair_mode_keeps_entity_spans_aligned(shard_dir):
    stream = _stream(shard_dir, objective="mlm+nsp", scheme="named_entity")
    checked = 0
    for row in range(40):
        part = stream.bare_block(0, row)
        spans, labels, n = part.entity_spans, part.entity_labels, len(part.input_ids)
        assert len(spans) == len(labels) and ((spans[:, 0] >= 0) & (spans[:, 1] <= n)).all()
        assert not ((spans[:, 0] < part.a_len) & (spans[:, 1] > part.a_len)).any()  # none across the A/B cut
        if part.nsp == IS_NEXT:  # A + B is the block's prefix: same spans, same tokens
            block_spans, block_labels = stream.shards.spans(row, "entity_spans")
            inside = [(tuple(sp), lab) for sp, lab in zip(block_spans.tolist(), block_labels, strict=True)
                      if sp[1] <= n and not (sp[0] < part.a_len < sp[1])]
            assert [(tuple(sp), lab) for sp, lab in zip(spans.tolist(), labels, strict=True)] == inside
            checked += 1
    assert checked > 5


def test_held_out_documents_are_never_trained_on(shard_dir):
    stream = _stream(shard_dir, holdout_fraction=0.3)
    train, held = stream.train_rows, stream.heldout_rows
    assert len(held) > 0 and len(train) > 0 and len(train) + len(held) == len(stream.shards)
    docs = {r: stream.shards.doc_id(int(r)) for r in range(len(stream.shards))}
    assert not {docs[r] for r in train} & {docs[r] for r in held}  # split by whole documents
    planned = np.concatenate(stream.plan.epoch(0))
    assert sorted(planned.tolist()) == sorted(train.tolist())
    pair = _stream(shard_dir, holdout_fraction=0.3, objective="mlm+nsp", scheme="subword", batch_size=16)
    assert pair.train_rows.tolist() == train.tolist()  # the split depends on the documents only


def test_vocabulary_mismatch_is_refused(shard_dir):
    with pytest.raises(ValueError, match="tokenized with vocabulary"):
        _stream(shard_dir, vocab_sha256="0" * 64)


def test_shards_tokenizer_must_be_the_one_the_manifest_recorded(shard_dir, tmp_path, capsys):
    """Two tokens of the shards' tokenizer.json swap ids: same size, another identity. The stream (and the CLI,
    as one `error:` line naming the file, exit 2) refuses it before any token id is read against it."""
    d = Path(shutil.copytree(shard_dir, tmp_path / "shards"))
    path = read_manifest(d).tokenizer_path
    assert path.parent == d and path.name == "tokenizer.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    vocab = raw["model"]["vocab"]
    vocab["the"], vocab["and"] = vocab["and"], vocab["the"]
    path.write_text(json.dumps(raw), encoding="utf-8")
    # the swapped file's identity, computed here: a hash of the id-ordered tokens (contract.tokenizer's definition)
    swapped = hashlib.sha256("\n".join(sorted(vocab, key=vocab.get)).encode()).hexdigest()
    recorded = read_manifest(d).vocab_sha256
    assert swapped != recorded and len(vocab) == read_manifest(d).vocab_size

    with pytest.raises(ShardError) as e:
        _stream(d)
    assert e.value.path == path and swapped[:12] in e.value.reason and recorded[:12] in e.value.reason
    assert _stream(shard_dir).vocab.sha256 == recorded  # the untouched copy opens

    run = tmp_path / "run"
    assert run_main(main, ["--config", "tiny", "--data", str(d), "--out", str(run), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: holds {len(vocab)} tokens, sha256 {swapped[:12]}"), err
    assert f"recorded {len(vocab)}, {recorded[:12]}" in err[0]


# -- pinned batches: the stream's exact output, recorded once ----------------------------------------
def _synthetic_spans(word_start: list[bool], row: int) -> tuple[list[dict], list[dict]]:
    """Entity and noun-phrase spans made from the block's word starts (no spaCy: its sentences and mentions
    could differ between platforms or model builds); labels cycle through kept and excluded (numeric) ones."""
    starts = [i for i, w in enumerate(word_start) if w] + [len(word_start)]
    labels = ("PERSON", "DATE", "ORG", "CARDINAL", "GPE")
    ents = [{"start": starts[k], "end": starts[min(k + 1 + (k + row) % 3, len(starts) - 1)],
             "label": labels[(k + row) % len(labels)]} for k in range(row % 4, len(starts) - 1, 5)]
    nps = [{"start": starts[k], "end": starts[min(k + 2, len(starts) - 1)]} for k in range(1, len(starts) - 1, 4)]
    return ents, nps


def _old_layout(out, manifest: dict, num_shards: int) -> None:
    """Rewrite the pipeline's range-local shards into the layout PINNED was recorded on (before issue 19):
    documents in `blake2b(doc_id) mod num_shards` shards, sorted by (doc_id, first block's pieces), blocks in
    order, files `shard-NNNNN-of-NNNNN.arrow`. The rows are the same; only their order and split differ."""
    from contract.schema import open_shard, shard_name

    table = pa.concat_tables([open_shard(out / e["file"]) for e in manifest["shards"]])
    for e in manifest["shards"]:
        (out / e["file"]).unlink()
    docs: dict[str, list[int]] = {}
    for i, d in enumerate(table.column("doc_id").to_pylist()):
        docs.setdefault(d, []).append(i)
    first = table.column("input_ids")
    buckets: list[list[tuple[str, bytes, list[int]]]] = [[] for _ in range(num_shards)]
    for d, rows in docs.items():
        b = int.from_bytes(hashlib.blake2b(d.encode("utf-8"), digest_size=8).digest(), "big") % num_shards
        buckets[b].append((d, np.asarray(first[rows[0]].as_py(), np.int32).tobytes(), rows))
    manifest["shards"] = []
    for index, bucket in enumerate(buckets):
        order = [r for _, _, rows in sorted(bucket, key=lambda x: (x[0], x[1])) for r in rows]
        part = table.take(pa.array(order, pa.int64()))
        name = shard_name(index, num_shards)
        with pa.OSFile(str(out / name), "wb") as f, pa.ipc.new_file(f, part.schema) as writer:
            writer.write_table(part)
        manifest["shards"].append({"file": name, "rows": part.num_rows, "tokens": len(part.column("input_ids").combine_chunks().flatten()), "bytes": 0, "sha256": ""})


@pytest.fixture(scope="module")
def pinned_shards(tmp_path_factory):
    """The pipeline without spaCy (its cheap sentence rule: tokenizer + block cutter only, platform-independent),
    3 shards, spans rewritten into every row by `_synthetic_spans`."""
    out = write_shards(tmp_path_factory.mktemp("pinned") / "shards", num_docs=8, block_size=64, num_shards=3,
                       max_chars=2500)
    manifest = json.loads((out / MANIFEST).read_text())
    _old_layout(out, manifest, 3)
    row = 0
    for entry in manifest["shards"]:
        path = out / entry["file"]
        table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()
        ents, nps = [], []
        for ws in table.column("word_start").to_pylist():
            e, n = _synthetic_spans(ws, row)
            ents.append(e)
            nps.append(n)
            row += 1
        table = table.set_column(table.schema.get_field_index("entity_spans"), BLOCK_SCHEMA.field("entity_spans"),
                                 pa.array(ents, BLOCK_SCHEMA.field("entity_spans").type))
        table = table.set_column(table.schema.get_field_index("noun_phrase_spans"),
                                 BLOCK_SCHEMA.field("noun_phrase_spans"),
                                 pa.array(nps, BLOCK_SCHEMA.field("noun_phrase_spans").type))
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
        entry["bytes"], entry["sha256"] = file_sha256(path)
    manifest["annotated"] = True  # the rows hold spans now; a --no-annotate manifest makes those schemes refuse them
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def _digest(batches: list[dict[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for b in batches:
        for k in sorted(b):
            t = b[k].contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


# Recorded from trainer/data.py at 2ef73cc (before the split into trainer/data/).
PINNED = {  # case -> (data config, stream kwargs, (row ids of 3 batches, sha256 of every tensor of them))
    "single-geometric-rank1": (
        {"batch_size": 4}, {"rank": 1, "world": 2, "start": 4},
        ([[29, 89, 19, 75], [59, 54, 3, 23], [37, 42, 9, 20]],
         'f11be116f8171d2c27fbcae518f0e787eca7b653861ab7ca2fa377f94091c972')),
    "single-named_entity-tokens": (
        {"masking": {"scheme": "named_entity"}, "batch_tokens": 256, "bucket_window": 4}, {},
        ([[70, 87, 56, 79], [58, 83, 19, 27], [53, 31, 1, 20]],
         '4b5d86c29fb5fe5ae71b400fe38f9390be67faa23da436d7e7786ff343acea41')),
    "single-noun_phrase-holdout-nosbo": (
        {"masking": {"scheme": "noun_phrase", "sbo_edge_spans": False}, "holdout_fraction": 0.25}, {"objective": "mlm"},
        ([[65, 46, 44, 80], [66, 79, 82, 43], [24, 81, 8, 62]],
         '33c8f83bd017ef19d02faae5ac8635ea52d6fd6a9d8aaa7dd481d03576f91148')),
    "pair-named_entity": (
        {"masking": {"scheme": "named_entity"}, "batch_size": 5}, {"objective": "mlm+nsp"},
        ([[24, 37, 3, 23, 2], [68, 66, 79, 69, 82], [10, 34]],
         '3378b04364c8c3ec4803dc49f2658f7e858d3f3c3be1b6b2e66283ee7a2705e8')),
    "pair-whole_word-steptokens": (
        {"masking": {"scheme": "whole_word"}, "step_tokens": 512, "pad_to_multiple": 16}, {"world": 2, "grad_accum": 2, "objective": "mlm+nsp"},
        ([[30, 64], [48, 14], [13, 88]],
         '73bb7b30bbb5afdb14361a4ee3aac25807582bffd475b8f8e2799c97530c2d8c')),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_pinned_batches(pinned_shards, case):
    """Three batches of each case, exactly as recorded before trainer/data.py became a package: any change to
    the plan, the NSP pairing, the span selection, the masks or the collation shows here."""
    data, kwargs, want = PINNED[case]
    masking = MaskingConfig(**data.get("masking", {}))
    cfg = DataConfig(**{"batch_size": 4, "num_workers": 0, **data, "masking": masking})
    stream = stream_of(pinned_shards, cfg, max_len=64, max_sbo_targets=15, seed=3, **kwargs)
    batches = list(itertools.islice(iter(stream), 3))
    got = ([b["row_ids"].tolist() for b in batches], _digest(batches))
    # A deliberate change of the stream (plan, pairing, masking, collation, or the shards' content)
    # re-records PINNED from `got`; a refactor never does.
    assert got == want, f"{case}: {got}"
    assert all(set(b) <= set(Batch.__annotations__) for b in batches)  # every key is documented in Batch
