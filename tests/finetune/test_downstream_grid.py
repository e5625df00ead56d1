"""`trainer.ablate --downstream`: the column groups it accepts, and a row fine-tuned on half of a TACRED /
MRQA file and scored on the other half (finetune.split by example id / by context)."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest
from test_mrqa import HEADER, qa
from test_tacred import toy_set

from finetune.evaluate_tacred import evaluate_files as tacred_files
from finetune.mrqa import read_lines, write_mrqa
from finetune.split import main as split_main
from trainer.ablate import Downstream, Row, finetune_row, parse_downstream


def test_parse_downstream(tmp_path):
    m, t = tmp_path / "NewsQA-dev.jsonl.gz", tmp_path / "tacred.json"
    m.write_bytes(b""), t.write_text("[]")
    s1, s2 = tmp_path / "v1.json", tmp_path / "v2.json"
    s1.write_text("{}"), s2.write_text("{}")
    got = parse_downstream(f"squad1,squad2,mrqa:{m},tacred:{t}", s1, s2)
    assert got == [Downstream("squad", s1, "squad1", "1.1"), Downstream("squad", s2, "squad2", "2.0"),
                   Downstream("mrqa", m, "mrqa_NewsQA_dev"), Downstream("tacred", t, "tacred")]
    assert [c for d in got for c in d.columns] == ["squad1_em", "squad1_f1", "squad2_em", "squad2_f1",
                                                  "mrqa_NewsQA_dev_em", "mrqa_NewsQA_dev_f1", "tacred_f1"]
    assert parse_downstream("none", s1, s2) == []
    for bad, msg in (("squad3", "expected squad1"), ("mrqa", "expected squad1"), (f"tacred:{tmp_path / 'no.json'}", "no such file"),
                     ("squad1,squad1", "twice")):
        with pytest.raises(SystemExit, match=msg):
            parse_downstream(bad, s1, s2)


def test_split_mrqa_by_context_and_tacred_by_id(tmp_path):
    rows = [{"context": f"context number {i} .", "qas": [qa(f"q{i}", ["number"], [(8, 13)])]} for i in range(6)]
    write_mrqa([HEADER, *rows], tmp_path / "m.jsonl.gz")
    assert split_main([str(tmp_path / "m.jsonl.gz"), "--out", str(tmp_path / "ms")]) == 0
    train, held = (read_lines(tmp_path / "ms" / f"{n}.jsonl.gz") for n in ("train", "heldout"))
    assert len(train) == len(held) == 3 and sorted(r["context"] for r in train + held) == sorted(r["context"] for r in rows)
    (tmp_path / "t.json").write_text(json.dumps(toy_set()))
    assert split_main([str(tmp_path / "t.json"), "--out", str(tmp_path / "ts")]) == 0
    a, b = (json.loads((tmp_path / "ts" / f"{n}.json").read_text()) for n in ("train", "heldout"))
    assert len(a) == len(b) == 12 and not {x["id"] for x in a} & {x["id"] for x in b}


@pytest.mark.slow
def test_a_row_scored_on_a_tacred_half(tmp_path, tiny_hf_dir):
    (tmp_path / "toy.json").write_text(json.dumps(toy_set()))
    args = argparse.Namespace(out=tmp_path / "grid", nproc=1, tacred_args=shlex.split("--max-steps 2 --batch-size 4 --eval-every 0"),
                              squad_args=shlex.split("--max-steps 2 --batch-size 4 --eval-every 0 --max-seq-length 64 "
                                                     "--doc-stride 32 --max-query-length 16"))
    (tmp_path / "grid").mkdir()
    row = Row("r", (), "geometric", ("mlm",))
    got = finetune_row(row, args, tiny_hf_dir, Downstream("tacred", tmp_path / "toy.json", "tacred"))
    out = tiny_hf_dir / "tacred"
    try:
        m = tacred_files(tmp_path / "grid" / "tacred-split" / "heldout.json", out / "predictions.txt")
        assert got == {"tacred_p": m.precision, "tacred_r": m.recall, "tacred_f1": m.f1}
    finally:  # the shared fixture directory: leave it as it was
        import shutil

        shutil.rmtree(tiny_hf_dir / "tacred", ignore_errors=True)
