"""The --no-annotate sentence rule against spaCy's sentences on real text: precision and recall of its starts.

    PYTHONPATH=. python bench/bench_sentence_rule.py --spacy-model fr_core_news_sm \\
        --jsonl tests/fixtures/french/debian-reference-fr.jsonl

spaCy's sentence starts (the parser's, as the annotated pipeline stores them) are the reference; both are
moved past leading whitespace, and each document's first sentence is left out of both sets (every rule
starts there). The rule as it was before it learnt other
scripts (ASCII capitals and English quotes only) is measured beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from contract.annotate import annotate, load_nlp
from pipeline.encode import rule_sentence_starts

ENGLISH_RULE = re.compile(r"\n[ \t]*\n\s*|[.!?][\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")


def word_at(text: str, s: int) -> int:
    """The offset of the first non-space character at or after `s`: spaCy starts a paragraph's sentence at
    its whitespace token ("\\n\\n"), the rule after it; both mean the same sentence."""
    while s < len(text) and text[s].isspace():
        s += 1
    return s


def scores(found: set[int], reference: set[int]) -> tuple[float, float]:
    hits = len(found & reference)
    return hits / max(1, len(found)), hits / max(1, len(reference))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jsonl", type=Path, required=True, help="documents, one JSON object ({'text': ...}) a line")
    p.add_argument("--spacy-model", default="fr_core_news_sm")
    args = p.parse_args()
    texts = [json.loads(line)["text"] for line in args.jsonl.read_text(encoding="utf-8").splitlines()]
    t0, c0 = time.perf_counter(), time.process_time()
    anns = annotate(load_nlp(args.spacy_model), texts)
    spacy_s = time.perf_counter() - t0
    spacy_cpu = time.process_time() - c0
    ref, new, old, paragraphs = set(), set(), set(), set()
    for k, (text, ann) in enumerate(zip(texts, anns, strict=True)):
        first = word_at(text, 0)
        ref |= {(k, w) for s in ann.sentence_starts if (w := word_at(text, s)) > first and w < len(text)}
        new |= {(k, w) for s in rule_sentence_starts(text) if (w := word_at(text, s)) > first}
        old |= {(k, word_at(text, m.end())) for m in ENGLISH_RULE.finditer(text) if 0 < m.end() < len(text)}
        paragraphs |= {(k, word_at(text, m.end())) for m in re.finditer(r"\n[ \t]*\n", text)}
    out = {"documents": len(texts), "characters": sum(map(len, texts)), "spacy_starts": len(ref),
           "spacy_seconds": round(spacy_s, 1), "spacy_cpu_seconds": round(spacy_cpu, 1)}
    # spaCy's French parser often runs a sentence on across a blank line ("prudent.\\n\\nIls sont ..."):
    # the second reference adds every paragraph start to spaCy's.
    out["spacy_missing_paragraph_starts"] = len(paragraphs - ref)
    for name, found in (("rule", new), ("english_rule", old)):
        out[name] = {"starts": len(found)}
        for against, reference in (("spacy", ref), ("spacy+paragraphs", ref | paragraphs)):
            precision, recall = scores(found, reference)
            out[name][against] = {"precision": round(precision, 4), "recall": round(recall, 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
