"""Paths of the committed SQuAD excerpts (demo/squad/README.md: origin, CC BY-SA 4.0)."""

from __future__ import annotations

import json
from pathlib import Path

SQUAD_FIXTURES = Path(__file__).resolve().parents[2] / "demo" / "squad"  # shipped with the demo
V1 = SQUAD_FIXTURES / "dev-v1.1-excerpt.json"
V2 = SQUAD_FIXTURES / "dev-v2.0-excerpt.json"


def squad_texts() -> list[str]:
    """Every context and question of both excerpts (vocabulary training text)."""
    texts = []
    for f in (V1, V2):
        for article in json.loads(f.read_text(encoding="utf-8"))["data"]:
            for p in article["paragraphs"]:
                texts.append(p["context"])
                texts.extend(qa["question"] for qa in p["qas"])
    return texts
