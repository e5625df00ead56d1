"""SQuAD JSON in, typed questions out: every file is checked before anything trains or scores on it.

A question's answers are character spans of its paragraph; the file is rejected (SquadError, one line
naming the file and the question) when an answer is not at its `answer_start`, when a question id is
used twice, or when the JSON is not in SQuAD's layout. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSIONS = ("1.1", "2.0")


class SquadError(ValueError):
    """Bad input; the message names the file and the problem (shown as `error: ...`, exit 2)."""


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset in the paragraph

    @property
    def end(self) -> int:  # exclusive
        return self.start + len(self.text)


@dataclass(frozen=True)
class Question:
    qid: str
    question: str
    context: str
    context_index: int  # paragraphs are numbered in file order; questions of one paragraph share it
    answers: tuple[Answer, ...]  # empty for an unanswerable (v2.0) question
    title: str

    @property
    def is_impossible(self) -> bool:
        return not self.answers


@dataclass(frozen=True)
class SquadSet:
    path: Path
    version: str
    articles: list[dict[str, Any]]  # the raw `data` list (for split.py, which writes SQuAD JSON back)
    questions: list[Question]
    contexts: list[str]  # indexed by Question.context_index

    @property
    def qids(self) -> list[str]:
        return [q.qid for q in self.questions]


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SquadError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SquadError(f"{path}: not JSON ({e})") from None


def detect_version(raw: dict[str, Any]) -> str:
    """2.0 when any question carries `is_impossible` (the v2.0 field), else 1.1."""
    for article in raw["data"]:
        for paragraph in article.get("paragraphs", []):
            if any("is_impossible" in qa for qa in paragraph.get("qas", [])):
                return "2.0"
    return "1.1"


def checked_context(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("context is not a string")
    return value


def claim_qid(path: Path, value: Any, seen: set[str]) -> str:
    """The question id as a string, refused when the file used it before (SQuAD and MRQA alike)."""
    qid = str(value)
    if qid in seen:
        raise SquadError(f"{path}: question id {qid!r} occurs twice")
    seen.add(qid)
    return qid


def load_squad(path: str | Path, version: str | None = None, check_answers: bool = True) -> SquadSet:
    """Read and validate a SQuAD 1.1 / 2.0 file; `version` None = detect it."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise SquadError(f"{path}: not SQuAD JSON (expected an object with a `data` list of articles)")
    if version is None:
        version = detect_version(raw)
    elif version not in VERSIONS:
        raise SquadError(f"{path}: unknown SQuAD version {version!r}; choose from {VERSIONS}")
    questions: list[Question] = []
    contexts: list[str] = []
    seen: set[str] = set()
    try:
        for a, article in enumerate(raw["data"]):
            title = str(article.get("title", f"article {a}"))
            for paragraph in article["paragraphs"]:
                context = checked_context(paragraph["context"])
                contexts.append(context)
                for qa in paragraph["qas"]:
                    qid = claim_qid(path, qa["id"], seen)
                    answers = tuple(Answer(str(x["text"]), int(x["answer_start"])) for x in qa["answers"])
                    if qa.get("is_impossible", False) and answers:
                        raise SquadError(f"{path}: question {qid!r} is_impossible but has answers")
                    if not answers and version == "1.1":
                        raise SquadError(f"{path}: question {qid!r} has no answer (a SQuAD 1.1 file; use --version 2.0?)")
                    if check_answers:
                        for ans in answers:
                            if context[ans.start:ans.end] != ans.text:
                                raise SquadError(
                                    f"{path}: question {qid!r}: answer {ans.text!r} is not in its context at "
                                    f"answer_start {ans.start} (found {context[ans.start:ans.end]!r})")
                    questions.append(Question(qid, str(qa["question"]), context, len(contexts) - 1, answers, title))
    except SquadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SquadError(f"{path}: not SQuAD JSON ({type(e).__name__}: {e} in article {a})") from None
    if not questions:
        raise SquadError(f"{path}: no questions")
    return SquadSet(path, version, raw["data"], questions, contexts)
