"""MRQA shared-task files (gzipped JSON lines, a `{"header": ...}` first line, one context per line) in, the
SQuAD records out, so MRQA trains, decodes and scores through the same windows, decoder and metrics.

A line is `{"context": str, "qas": [{"qid", "question", "answers": [str, ...], "detected_answers":
[{"text", "char_spans": [[start, end], ...]}]}]}` with **inclusive** character ends. As the reference's
run_mrqa.py: training targets the earliest of all the detected spans of a question (its sorted first);
scoring uses `answers`, the strings the official scorer reads (they need not occur in the context).
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.data import Answer, Question, SquadError, SquadSet, checked_context, claim_qid


@dataclass(frozen=True)
class Gold:
    qid: str
    answers: tuple[str, ...]  # the official scorer's gold texts


@dataclass(frozen=True)
class MrqaSet:
    squad: SquadSet  # version "1.1": every question's answers are its detected spans, earliest first
    golds: list[Gold]  # in question order

    def gold_pairs(self) -> list[tuple[str, list[str]]]:
        return [(g.qid, list(g.answers)) for g in self.golds]


def read_lines(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a gzipped JSONL file after its header line."""
    path = Path(path)
    if not path.is_file():
        raise SquadError(f"{path}: no such file")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n") if line.strip()]
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise SquadError(f"{path}: not a gzipped MRQA file ({e})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise SquadError(f"{path}: line {n} is not JSON ({e})") from None
    if not rows or not isinstance(rows[0], dict) or "header" not in rows[0]:
        raise SquadError(f"{path}: the first line is not an MRQA header ({{\"header\": ...}})")
    return rows[1:]


def load_mrqa(path: str | Path, training: bool) -> MrqaSet:
    """Read and check an MRQA file; `training` requires every question to have a detected answer."""
    path = Path(path)
    questions: list[Question] = []
    contexts: list[str] = []
    golds: list[Gold] = []
    seen: set[str] = set()
    for n, row in enumerate(read_lines(path), 2):
        try:
            context = checked_context(row["context"])
            contexts.append(context)
            for qa in row["qas"]:
                qid = claim_qid(path, qa["qid"], seen)
                spans = sorted(tuple(map(int, s)) for d in qa.get("detected_answers", []) for s in d["char_spans"])
                for s, e in spans:
                    if not 0 <= s <= e < len(context):
                        raise SquadError(f"{path}: question {qid!r}: char span [{s}, {e}] (inclusive) is outside "
                                         f"its {len(context)}-character context")
                if training and not spans:
                    raise SquadError(f"{path}: question {qid!r} has no detected answer to train on")
                answers = tuple(str(a) for a in qa["answers"])
                if not answers:
                    raise SquadError(f"{path}: question {qid!r} has no answers (the scorer's gold texts)")
                questions.append(Question(qid, str(qa["question"]), context, len(contexts) - 1,
                                          tuple(Answer(context[s:e + 1], s) for s, e in spans), ""))
                golds.append(Gold(qid, answers))
        except SquadError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SquadError(f"{path}: line {n}: not MRQA ({type(e).__name__}: {e})") from None
    if not questions:
        raise SquadError(f"{path}: no questions")
    return MrqaSet(SquadSet(path, "1.1", [], questions, contexts), golds)


def squad_to_mrqa(data: SquadSet, name: str = "SQuAD") -> list[dict[str, Any]]:
    """A SQuAD set as MRQA lines (header first): one line per paragraph, `answers` the gold texts,
    `detected_answers` their character spans with inclusive ends (how MRQA ships SQuAD). MRQA has no
    unanswerable questions: those of a 2.0 set are left out (a paragraph with none left too)."""
    lines: list[dict[str, Any]] = [{"header": {"dataset": name, "split": "converted"}}]
    by_context: dict[int, list[Question]] = {}
    for q in data.questions:
        if q.is_impossible:
            continue
        by_context.setdefault(q.context_index, []).append(q)
    for ci, qs in sorted(by_context.items()):
        lines.append({"context": data.contexts[ci], "qas": [{
            "qid": q.qid, "question": q.question, "answers": [a.text for a in q.answers],
            "detected_answers": [{"text": a.text, "char_spans": [[a.start, a.end - 1]]} for a in q.answers if a.text],
        } for q in qs]})
    return lines


def write_mrqa(lines: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    return path
