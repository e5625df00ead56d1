"""Every input file is accounted for (issue 20 items 3, 4, 6): line endings, files not in their declared
format, unknown FORMAT: prefixes, bad paths, and a corpus that yields no block."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract.cli import run_main
from contract.schema import Manifest
from pipeline.documents import CleanOptions, clean_document
from pipeline.run import main as pipeline_main
from tests.conftest import REPO, VOCAB, build_shards

DOCS = [("1", "First", "Alpha beta gamma.\nSecond line of one."), ("2", "Second", "Delta epsilon."),
        ("3", "Third", "Zeta eta theta.\nIota.")]


def _wiki(newline: str) -> bytes:
    text = "".join(f'<doc id="{i}" url="u{i}" title="{t}">\n{body}\n</doc>\n' for i, t, body in DOCS)
    return text.replace("\n", newline).encode()


def _frame(data: bytes, start: int = 0, end: int | None = None) -> list:
    from pipeline.documents import frame_wikiextractor

    return [clean_document(r, CleanOptions()) for r in frame_wikiextractor(io.BytesIO(data), "w.txt", start, end)]


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_every_line_ending_frames_the_same_documents(newline):
    want = [(d.doc_id, d.text) for d in _frame(_wiki("\n"))]
    assert want == [(f"w.txt#{i}", body) for i, _, body in DOCS]  # the hand-written documents
    got = _frame(_wiki(newline))
    assert [(d.doc_id, d.text) for d in got] == want


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_byte_ranges_split_anywhere_yield_every_document_once(newline):
    data = _wiki(newline)
    for cut in range(1, len(data)):
        got = [d.doc_id for d in _frame(data, 0, cut) + _frame(data, cut, None)]
        assert got == [f"w.txt#{i}" for i, _, _ in DOCS], (newline, cut)


def _pipeline(tmp_path: Path, inputs: list[str], *flags: str) -> Manifest:
    return build_shards(tmp_path / "out", inputs, "--no-annotate", "--num-shards", "1", "--block-size", "64", *flags)


@pytest.mark.slow
def test_files_not_in_the_declared_format_are_counted_dead_letters(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a-good.txt").write_bytes(_wiki("\n"))
    (src / "b-utf16.txt").write_bytes(_wiki("\n").decode().encode("utf-16"))
    (src / "c-binary.txt").write_bytes(bytes(range(256)) * 8)
    (src / "d-plain.txt").write_text("Just a plain text file, not WikiExtractor output.\n")
    (src / "e-empty.txt").write_bytes(b"")
    manifest = _pipeline(tmp_path, [f"wikiextractor:{src}/*.txt"])
    t = manifest.totals
    assert (t.documents_read, t.documents_written, t.documents_rejected) == (7, 3, 4)
    dead = {json.loads(x)["source"]: json.loads(x)["reason"]
            for x in (tmp_path / "out" / "dead_letter.jsonl").read_text().splitlines()}
    assert dead == {"in/b-utf16.txt": "utf16", "in/c-binary.txt": "binary", "in/d-plain.txt": "no_wikiextractor_docs",
                    "in/e-empty.txt": "empty_file"}


def _cli_error(argv: list[str], capsys) -> str:
    assert run_main(pipeline_main, argv) == 2
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_an_unknown_format_prefix_lists_the_known_formats(tmp_path, capsys):
    # The case was wikidump:, before that became a format: any unknown word before ":" is the same.
    line = _cli_error(["--input", "wikixml:F.xml.bz2", "--vocab", str(VOCAB), "--output", str(tmp_path / "o")], capsys)
    assert "unknown format 'wikixml'; known formats: wikiextractor, text, jsonl, wikidump" in line
    assert not (tmp_path / "o").exists()


def test_a_directory_as_input_and_a_file_as_output_fail_before_beam(tmp_path, capsys):
    line = _cli_error(["--input", str(tmp_path), "--vocab", str(VOCAB), "--output", str(tmp_path / "o")], capsys)
    assert f"--input {tmp_path}: is a directory" in line
    (tmp_path / "x.txt").write_bytes(_wiki("\n"))
    (tmp_path / "file").write_text("")
    line = _cli_error(["--input", str(tmp_path / "x.txt"), "--vocab", str(VOCAB), "--output", str(tmp_path / "file")], capsys)
    assert f"--output {tmp_path / 'file'}: exists and is not a directory" in line
    assert not (tmp_path / "o").exists()  # refused before prepare_output, so before any Beam work


def test_zero_row_shards_give_no_blocks_in_the_trainer(tmp_path, capsys):
    from trainer.__main__ import main as trainer_main

    (tmp_path / "empty.jsonl").write_text('{"id": 1, "text": "   "}\n')  # one document, rejected as empty
    _pipeline(tmp_path, [f"jsonl:{tmp_path}/empty.jsonl"])
    capsys.readouterr()
    argv = ["--config", "tiny", "--data", str(tmp_path / "out"), "--out", str(tmp_path / "run"), "--set", "data.num_workers=0"]
    assert run_main(trainer_main, argv) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'out'}: no blocks (1 shards, 0 rows; the pipeline "
                                               "read 1 documents and rejected 1, see its dead_letter.jsonl)")

@pytest.mark.slow
def test_a_full_disk_while_writing_shards_or_manifest_is_one_line_and_leaves_no_temporaries(tmp_path, small_disk):
    (small_disk / "ballast").write_bytes(b"\0" * (6 * 2**20 - 300 * 2**10))  # 300 KB left: the shard fits, the rest not
    (tmp_path / "w.txt").write_bytes(_wiki("\n"))
    out = small_disk / "out"
    done = subprocess.run([sys.executable, "-m", "pipeline", "--input", str(tmp_path / "w.txt"), "--vocab", str(VOCAB),
                           "--output", str(out), "--no-annotate", "--num-shards", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": ""})
    lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
    assert done.returncode == 3 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {out}/") and "write failed: No space left on device (ENOSPC)" in lines[0], lines
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / "manifest.json").exists()  # never a manifest that vouches for a partial directory
