"""The --no-annotate sentence rule in other scripts and French typography, and unchanged on English."""

from __future__ import annotations

import re

import pytest

from pipeline.encode import rule_sentence_starts
from tests.conftest import GUTENBERG, GUTENBERG_RAW

# The rule before it learnt other scripts, verbatim: on English text the new one must give the same starts.
ENGLISH_RULE = re.compile(r"\n[ \t]*\n\s*|[.!?][\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
NBSP, NNBSP = "\u00a0", "\u202f"


def starts_of(text: str) -> list[str]:
    """The first word of every sentence the rule finds."""
    return [text[s:].split(" ")[0] for s in rule_sentence_starts(text)]


@pytest.mark.parametrize("text, first_words", [
    # Uppercase letters of any script start a sentence.
    ("Il part. Élise reste. À demain.", ["Il", "Élise", "À"]),
    ("Он ушёл. Я остался.", ["Он", "Я"]),
    ("Ήρθε. Ωραία.", ["Ήρθε.", "Ωραία."]),
    # French quotes, with a plain, no-break or narrow no-break space inside them.
    ("Il dit. « Oui » fut la réponse.", ["Il", "«"]),
    (f"Il dit. «{NBSP}Oui{NBSP}», puis partit.", ["Il", f"«{NBSP}Oui{NBSP}»,"]),
    # A (narrow) no-break space before ? and ! (French typography), and before a closing ».
    (f"Vraiment{NNBSP}? Oui{NBSP}! Bien.", [f"Vraiment{NNBSP}?", f"Oui{NBSP}!", "Bien."]),
    (f"«{NBSP}Qui{NBSP}?{NBSP}» Personne.", [f"«{NBSP}Qui{NBSP}?{NBSP}»", "Personne."]),
    ("Il cria : « Non ! » Puis il se tut.", ["Il", "Puis"]),
    # Spanish and German opening marks.
    ("Hola. ¿Qué tal? ¡Bien!", ["Hola.", "¿Qué", "¡Bien!"]),
    ("Er kam. „Gut“, sagte sie. ‚Ja‘.", ["Er", "„Gut“,", "‚Ja‘."]),
    # Not a start: a lowercase word, a colon or a semicolon (they never end a sentence).
    (f"Voici{NNBSP}: une liste{NNBSP}; encore. etc. Fin.", [f"Voici{NNBSP}:", "Fin."]),
])
def test_rule_in_other_languages(text, first_words):
    assert starts_of(text) == first_words


def test_english_text_is_cut_as_before_except_before_non_ascii_capitals(real_text):
    """The English fixtures: every start the old rule found, and only new ones before a non-ASCII capital
    (". Édouard Manet": two in the Wikipedia sample, whose shards stay byte-identical all the same)."""
    extra = 0
    for path in [*sorted(GUTENBERG.glob("*.txt")), *sorted(GUTENBERG_RAW.glob("*.txt")), real_text]:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one book is Latin-1 (the pipeline's --encoding-fallback case)
            text = raw.decode("latin-1")
        old = [0, *(m.end() for m in ENGLISH_RULE.finditer(text) if m.end() < len(text))]
        new = rule_sentence_starts(text)
        assert set(old) <= set(new) and len(old) > 100, path.name
        added = [text[s] for s in sorted(set(new) - set(old))]
        assert all(c.isupper() and not c.isascii() for c in added), (path.name, added)
        extra += len(added)
    assert extra == 2  # "timbre. Ɂ indicates", "event. Édouard Manet"
