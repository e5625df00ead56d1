"""Sequence-length phases (data.phases): blocks cut into sub-blocks at word boundaries (hand-worked cuts;
on real shards every piece kept, every cut at a word start, every sub-block as long as it can be), the
stream switching at the right data position with the token budget held and masks keyed by the phase, and
through train.run: the LR schedule unchanged by phases and resumes on either side of the switch bit-exact."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from tests.trainer.conftest import stream_of, tiny_config
from trainer import checkpoint
from trainer.config import Phase
from trainer.data import SubBlocks, cut_at_words
from trainer.train import lr_factor, run


def _ws(pattern: str) -> np.ndarray:
    return np.array([c == "W" for c in pattern])  # W: a word's first piece, -: a continuation


@pytest.mark.parametrize(("pattern", "capacity", "cuts"), [
    ("W-WW--W", 3, [0, 3, 6, 7]),  # words [0,2) [2,3) [3,6) [6,7): runs of whole words, each the longest that fits
    ("W-WW--W", 2, [0, 2, 3, 5, 7]),  # the 3-piece word [3,6) does not fit in 2: cut inside it, at 5
    ("W-WW--W", 7, [0, 7]),  # fits: one sub-block
    ("W---------", 4, [0, 4, 8, 10]),  # one long word: cut every 4
    ("WWWW", 1, [0, 1, 2, 3, 4]),
    ("", 4, [0]),  # nothing to cut
])
def test_cut_at_words_hand_worked(pattern, capacity, cuts):
    assert cut_at_words(_ws(pattern), capacity).tolist() == cuts


def test_sub_blocks_of_real_shards_keep_every_piece_and_cut_at_word_starts(shard_dir):
    stream = stream_of(shard_dir, tiny_config().data, seed=0, max_len=64)
    shards, rows = stream.shards, stream.train_rows
    capacity = 14
    subs = SubBlocks.of(shards, rows, capacity + 2, phase=0)
    forced = 0
    for r in rows:
        ids, ws = shards.ids(int(r))
        mine = np.flatnonzero(subs.row == r)
        assert subs.ordinal[mine].tolist() == list(range(len(mine)))
        assert np.array_equal(np.concatenate([ids[subs.lo[i]:subs.hi[i]] for i in mine]), ids)  # re-joins: no piece dropped
        word_starts = np.flatnonzero(ws).tolist() + [len(ids)]
        for i in mine:
            lo, hi = int(subs.lo[i]), int(subs.hi[i])
            assert 0 < hi - lo <= capacity
            if not ws[lo]:  # inside a word: only where that word is longer than the capacity
                forced += 1
                begin = max(s for s in word_starts if s <= lo)
                end = min(s for s in word_starts if s > lo)
                assert end - begin > capacity
            if hi < len(ids) and ws[hi]:  # the longest run of whole words: the next word would not fit
                assert min(s for s in word_starts if s > hi) - lo > capacity
            elif hi < len(ids):  # cut inside a word: a full sub-block
                assert hi - lo == capacity
    assert len(subs) > 2 * len(rows)  # 62-piece blocks in 14-piece runs
    assert forced < len(subs) // 20  # words longer than 14 pieces are rare


def _phased_stream(shard_dir, start=0, **data):
    cfg = tiny_config(data={"step_tokens": 512, "pad_to_multiple": 8, **data})
    return stream_of(shard_dir, cfg.data, seed=3, max_len=64, start=start,
                       phases=(Phase(0, 16), Phase(40, 64)))


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_the_stream_switches_phase_at_its_position_holds_the_budget_and_resumes_anywhere(shard_dir):
    stream = _phased_stream(shard_dir)
    short, long = stream.phases
    assert (short.start, long.start) == (0, 40) and short.max_len == 16 and long.sub_blocks is None
    batches = _take(stream, 48)
    widths = [b["input_ids"].shape[1] for b in batches]
    assert max(widths[:40]) <= 16 and min(widths[40:]) > 16
    assert all(b["input_ids"].numel() <= 512 for b in batches)  # the same padded-token budget in both phases
    assert np.mean([len(b["input_ids"]) for b in batches[:40]]) > 3 * np.mean([len(b["input_ids"]) for b in batches[40:]])
    # Phase 0's first epoch: every sub-block exactly once (keys decode to (phase, row, ordinal)).
    per_epoch = len(short.plan.epoch(0))
    assert per_epoch <= 40
    keys = Counter(k for b in batches[:per_epoch] for k in b["row_ids"].tolist())
    assert sorted(keys) == sorted(short.sub_blocks.keys(np.arange(len(short.sub_blocks))).tolist())
    assert set(keys.values()) == {1}
    assert {k >> 50 for k in keys} == {1}  # phase 0 keys; whole blocks keep their row ids
    assert all(int(k) < len(stream.shards) for b in batches[40:] for k in b["row_ids"])
    # The long phase starts at its own plan's first batch (of its epoch 0): none of its batches skipped.
    for i, b in enumerate(batches[40:]):
        assert b["row_ids"].tolist() == long.plan.epoch(0)[i].tolist() and set(b["epoch"].tolist()) == {0}
    # A stream started anywhere (a resume) gives the same batches, bit for bit, on either side of the switch.
    for start in (38, 40, 41):
        resumed = _take(_phased_stream(shard_dir, start=start), 48 - start)
        for a, b in zip(batches[start:], resumed, strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_masks_are_keyed_by_the_phase(shard_dir):
    """The same block's pieces masked in the long phase and in a short phase get independent masks: a short
    phase's sub-block covering a whole block is not masked like that block."""
    cfg = tiny_config(data={"batch_size": 4})
    stream = stream_of(shard_dir, cfg.data, seed=3, max_len=64, phases=(Phase(0, 63), Phase(10, 64)))
    short, long = stream.phases
    whole = np.flatnonzero((short.sub_blocks.lo == 0) & (short.sub_blocks.hi == stream.shards.lengths[short.sub_blocks.row]))[:8]
    a = stream.collate(0, whole, short)
    b = stream.collate(0, short.sub_blocks.row[whole], long)
    # the same pieces: equal non-pad lengths per row (the pad width may differ: the short phase caps it at 63)
    assert np.array_equal((a["input_ids"].numpy() != 0).sum(1), (b["input_ids"].numpy() != 0).sum(1))
    assert not np.array_equal(a["mlm_positions"].numpy(), b["mlm_positions"].numpy())
    assert np.array_equal(stream.collate(0, whole, short)["mlm_positions"].numpy(), a["mlm_positions"].numpy())


@pytest.mark.parametrize(("phases", "words"), [
    ([[1.0, 16]], "shares in (0, 1)"), ([[0.5, 32], [0.4, 48]], "increasing"), ([[0.5, 32], [0.6, 16]], "increasing"),
    ([[0.5, 2]], "lengths >= 3"), ([[0.5, 64]], "< model.max_position 64"),
])
def test_bad_phases_are_refused_naming_the_field(phases, words):
    with pytest.raises(ValueError, match="data.phases") as e:
        tiny_config(data={"phases": phases})
    assert words in str(e.value)


def test_phases_refuse_the_pair_baseline():
    with pytest.raises(ValueError, match="data.phases needs one segment"):
        tiny_config(data={"phases": [[0.5, 32]]}, model={"objective": "mlm+nsp"})


STEPS, SWITCH = 8, 4


def _cfg(**train):
    return tiny_config(data={"phases": [[SWITCH / STEPS, 16]], "step_tokens": 256, "pad_to_multiple": 8},
                       optim={"warmup_steps": 2, "schedule_steps": STEPS},
                       train={"max_steps": STEPS, "ckpt_every": 1, "keep_last": STEPS, **train})


def _metrics(run_dir) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_training_across_the_switch_resumes_bit_exact_with_a_continuous_lr(shard_dir, tmp_path):
    straight = _metrics(_run(_cfg(), shard_dir, tmp_path / "straight"))
    assert list(straight) == list(range(1, STEPS + 1))
    assert all(straight[s]["mean_seq_len"] <= 16 for s in range(1, SWITCH + 1))
    assert all(straight[s]["mean_seq_len"] > 16 for s in range(SWITCH + 1, STEPS + 1))
    # The LR is a function of the step alone: the same as the schedule's, phases or not.
    assert [straight[s]["lr"] for s in straight] == [1e-3 * lr_factor(s - 1, 2, STEPS) for s in straight]
    # Killed after steps 3, 4 (the last short one) and 5, resumed from that checkpoint: the same losses, bit for bit.
    for stop in (SWITCH - 1, SWITCH, SWITCH + 1):
        out = tmp_path / f"resumed-{stop}"
        ckpt = checkpoint.ckpt_dir(tmp_path / "straight") / f"step-{stop:08d}.pt"
        resumed = _metrics(_run(_cfg(), shard_dir, out, resume=str(ckpt)))
        assert {s: m["loss"] for s, m in resumed.items()} == {s: straight[s]["loss"] for s in range(stop + 1, STEPS + 1)}
        assert all(resumed[s]["data_position"] == straight[s]["data_position"] for s in resumed)


def _run(cfg, shard_dir, out, resume="never"):
    run(cfg, shard_dir, out, resume=resume)
    return out
